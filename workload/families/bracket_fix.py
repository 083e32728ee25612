"""The ``bracket_fix`` family: a one-line call whose end was cut off; close every open bracket.

``fix: f([a,b`` -> ``f([a,b])``. ``bracket_completion`` is the rule's executable statement.
Verifier: ``exact``.
"""

from __future__ import annotations

from random import Random

from workload.families._common import between, pick
from workload.task_format import MAX_ANSWER_CHARS, VERIFIER_EXACT, Task, make_task

__all__ = ["bracket_completion", "generate"]

_CLOSER = {"(": ")", "[": "]", "{": "}"}
# level -> (opener kinds, the kind that must appear, open brackets to close, closed-arg depth)
_BRACKET_LEVELS: dict[int, tuple[str, str, tuple[int, int], int]] = {
    1: ("(", "(", (1, 2), 1),
    2: ("([", "[", (2, 3), 1),
    3: ("([{", "{", (3, 4), 2),
}


def _open_token(rng: Random, opener: str) -> str:
    # "(" is always a call, as in a line of code; "[" and "{" are list and set displays.
    return pick(rng, "fgh") + "(" if opener == "(" else opener


def _closed_arg(rng: Random, kinds: str, depth: int) -> str:
    """A complete (balanced) argument: a name, or a bracketed group of 1-2 arguments."""
    if depth <= 0 or rng.random() < 0.6:
        return pick(rng, "abcde")
    opener = pick(rng, kinds)
    inner = ",".join(_closed_arg(rng, kinds, depth - 1) for _ in range(between(rng, 1, 2)))
    return _open_token(rng, opener) + inner + _CLOSER[opener]


def bracket_completion(text: str) -> str:
    """The rule: append the closers of the still-open brackets, innermost first.

    Inputs are prefix-consistent (every closer present matches the innermost open bracket);
    this helper is the rule's executable statement and raises on any other input.
    """
    stack: list[str] = []
    for ch in text:
        if ch in _CLOSER:
            stack.append(_CLOSER[ch])
        elif ch in ")]}" and (not stack or stack.pop() != ch):
            raise ValueError(f"mismatched closer {ch!r} in {text!r}")
    return text + "".join(reversed(stack))


def generate(rng: Random, difficulty: int) -> Task:
    kinds, required, (lo, hi), arg_depth = _BRACKET_LEVELS[difficulty]
    for _ in range(1000):  # rejection keeps the length bound and the level's bracket kind
        open_count = between(rng, lo, hi)
        parts: list[str] = []
        stack: list[str] = []
        for level in range(open_count):
            opener = "(" if level == 0 else pick(rng, kinds)  # the line is a function call
            parts.append(_open_token(rng, opener))
            stack.append(_CLOSER[opener])
            for _ in range(between(rng, 0, 1)):  # complete arguments before the next opener
                parts.append(_closed_arg(rng, kinds, arg_depth) + ",")
        parts.append(_closed_arg(rng, kinds, arg_depth))  # the cut falls after a whole arg
        broken = "".join(parts)
        answer = broken + "".join(reversed(stack))
        if required in broken and len(answer) <= MAX_ANSWER_CHARS:
            break
    else:  # pragma: no cover - the level table makes a fitting draw overwhelmingly likely
        raise RuntimeError("bracket_fix: no task fits the length bound")
    depth = max_depth = 0
    for ch in broken:
        if ch in _CLOSER:
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch in ")]}":
            depth -= 1
    features = {
        "size": open_count,
        "open_brackets": open_count,
        "bracket_pairs": sum(broken.count(o) for o in _CLOSER),
        "bracket_kinds": sum(o in broken for o in _CLOSER),
        "max_depth": max_depth,
    }
    return make_task("bracket_fix", difficulty, f"fix: {broken}", answer, features,
                     VERIFIER_EXACT)
