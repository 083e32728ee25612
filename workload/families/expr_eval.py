"""The ``expr_eval`` family: integer arithmetic with +, -, * and (at level 3) parentheses.

``eval: 7-9*6-4`` -> ``-51``. Python precedence ("*" before "+"/"-", left to right);
answers may be negative. Verifier: ``int``.
"""

from __future__ import annotations

from random import Random
from typing import Any

from workload.families._common import below, between, pick
from workload.task_format import VERIFIER_INT, Task, make_task

__all__ = ["generate"]

# level -> (operand counts, largest operand, operators, "*" required..allowed, parenthesis
# pairs). Level 1 never has "*", level 2 always exactly one (precedence without
# parentheses), level 3 always parentheses: the levels' prompts are disjoint.
_EXPR_LEVELS: dict[int, tuple[tuple[int, int], int, str, tuple[int, int], tuple[int, int]]] = {
    1: ((2, 3), 9, "+-", (0, 0), (0, 0)),
    2: ((3, 4), 12, "+-", (1, 1), (0, 0)),
    3: ((4, 5), 20, "+-*", (0, 2), (1, 2)),
}

# An expression is [operand, op, operand, op, ...]; an operand is an int or a nested list
# (a parenthesised group). Keeping the structure lets the generator render and evaluate it
# without parsing anything.
_Expr = list[Any]


def _expr_value(items: _Expr) -> int:
    """Value with Python's precedence: "*" binds tighter; "+" and "-" are left-associative."""

    def operand(x: int | _Expr) -> int:
        return _expr_value(x) if isinstance(x, list) else x

    terms: list[int] = []
    signs: list[str] = []
    current = operand(items[0])
    for i in range(1, len(items), 2):
        op, value = items[i], operand(items[i + 1])
        if op == "*":
            current *= value
        else:
            terms.append(current)
            signs.append(op)
            current = value
    terms.append(current)
    total = terms[0]
    for sign, term in zip(signs, terms[1:], strict=True):
        total = total + term if sign == "+" else total - term
    return total


def _expr_text(items: _Expr) -> str:
    return "".join(f"({_expr_text(x)})" if isinstance(x, list) else str(x) for x in items)


def _group(items: _Expr, first: int, last: int) -> _Expr:
    """Wrap operands first..last (operand indices, inclusive) in one parenthesised group."""
    start, stop = 2 * first, 2 * last + 1
    return [*items[:start], items[start:stop], *items[stop:]]


def generate(rng: Random, difficulty: int) -> Task:
    (lo, hi), top, ops, (min_mul, max_mul), (min_parens, max_parens) = _EXPR_LEVELS[difficulty]
    count = between(rng, lo, hi)
    operators = [pick(rng, ops) for _ in range(count - 1)]
    mul_positions = [i for i, op in enumerate(operators) if op == "*"]
    for i in mul_positions[max_mul:]:  # cap "*" so answers stay short enough to learn
        operators[i] = pick(rng, "+-")
    if min_mul and not mul_positions:
        operators[below(rng, count - 1)] = "*"
    operands = [between(rng, 0, top) for _ in range(count)]
    items: _Expr = [operands[0]]
    for op, value in zip(operators, operands[1:], strict=True):
        items += [op, value]

    parens = between(rng, min_parens, max_parens)
    if parens:
        # An outer group of 2..count-1 operands (never the whole expression: that would be
        # a no-op), and optionally a second group nested strictly inside it.
        size = between(rng, 2, count - 1)
        first = between(rng, 0, count - size)
        inner_size = between(rng, 2, size - 1) if parens > 1 and size >= 3 else 0
        if inner_size:
            group = items[2 * first : 2 * (first + size) - 1]
            inner_first = between(rng, 0, size - inner_size)
            group = _group(group, inner_first, inner_first + inner_size - 1)
            items = [*items[: 2 * first], group, *items[2 * (first + size) - 1 :]]
        else:
            items = _group(items, first, first + size - 1)
        parens = 2 if inner_size else 1

    text = _expr_text(items)
    features = {
        "size": count,
        "operands": count,
        "operators": count - 1,
        "mul_ops": operators.count("*"),
        "paren_pairs": parens,
        "max_operand_digits": len(str(max(operands))),
    }
    return make_task("expr_eval", difficulty, f"eval: {text}", str(_expr_value(items)),
                     features, VERIFIER_INT)
