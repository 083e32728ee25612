"""The ``var_trace`` family: the printed value after a few assignments (straight-line code).

``trace: a=12;a=a+12;print(a)`` -> ``24``. Verifier: ``int``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from random import Random

from workload.families._common import between, pick
from workload.task_format import VERIFIER_INT, Task, make_task

__all__ = ["generate"]

# level -> (statements, variables, largest literal, operators, most "*" allowed); statement
# counts are disjoint across levels so a prompt names its level. Level 1 gets a wider literal
# range only so that it has enough distinct prompts for a train / held-out split.
_TRACE_LEVELS: dict[int, tuple[tuple[int, int], str, int, str, int]] = {
    1: ((2, 2), "ab", 29, "+-", 0),
    2: ((3, 3), "ab", 19, "+-", 0),
    3: ((4, 5), "abc", 9, "+-*", 1),
}
_BINARY: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub,
                                                  "*": operator.mul}


def generate(rng: Random, difficulty: int) -> Task:
    (lo, hi), names, top, ops, max_mul = _TRACE_LEVELS[difficulty]
    count = between(rng, lo, hi)
    env: dict[str, int] = {}
    statements: list[str] = []
    muls = 0
    first = names[0]
    env[first] = between(rng, 0, top)
    statements.append(f"{first}={env[first]}")
    for _ in range(count - 1):
        target = pick(rng, names)
        assigned = [v for v in names if v in env]  # in name order, for determinism
        # The left operand is always a variable already assigned (so every statement
        # reads state); the right one is another assigned variable or a literal, never the
        # left one again: "a-a" is always 0, a shortcut that skips tracking state.
        left = pick(rng, assigned)
        right = pick(rng, [*(v for v in assigned if v != left), str(between(rng, 0, top))])
        op = pick(rng, ops)
        if op == "*":
            if muls >= max_mul:  # cap "*" so values stay short
                op = pick(rng, "+-")
            muls += op == "*"
        if target not in env and rng.random() < 0.5:
            env[target] = between(rng, 0, top)  # introduce a new variable with a literal
            statements.append(f"{target}={env[target]}")
            continue
        env[target] = _BINARY[op](env[left], env[right] if right in env else int(right))
        statements.append(f"{target}={left}{op}{right}")
    shown = pick(rng, [v for v in names if v in env])
    program = ";".join(statements) + f";print({shown})"
    features = {
        "size": count,
        "statements": count,
        "variables": len(env),
        "mul_ops": program.count("*"),
        "reassignments": count - len(env),
    }
    return make_task("var_trace", difficulty, f"trace: {program}", str(env[shown]), features,
                     VERIFIER_INT)
