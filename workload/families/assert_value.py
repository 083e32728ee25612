"""The ``assert_value`` family: the value a Python assert needs, over small strings, lists
and ints.

``assert len('abc')+2 == ?`` -> ``5``. Verifier: ``int``, ``string`` or ``exact`` (int
lists), by the type of the value. ``workload.tasks.safe_eval`` cross-checks every template
in the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from random import Random
from typing import Any

from workload.families._common import below, between, list_text, pick
from workload.task_format import (
    VERIFIER_EXACT,
    VERIFIER_INT,
    VERIFIER_STRING,
    Task,
    VerifierSpec,
    make_task,
)

__all__ = ["generate"]

_LITERALS = re.compile(r"'([^']*)'|\[([0-9,]*)\]")  # string and int-list literals
_LETTERS = "abcde"  # a small alphabet makes count/find/replace meaningful


def _word(rng: Random, lo: int, hi: int) -> str:
    return "".join(pick(rng, _LETTERS) for _ in range(between(rng, lo, hi)))


def _ints(rng: Random, lo: int, hi: int) -> list[int]:
    return [between(rng, 0, 9) for _ in range(between(rng, lo, hi))]


def _q(s: str) -> str:
    return f"'{s}'"


# Each template returns (source, value, operations). The value is computed alongside the
# source; the tests check every template against safe_eval(source). "operations" counts
# calls, operators and subscripts: the size feature.
_Template = Callable[[Random], tuple[str, Any, int]]


def _a_len_word(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 1, 6)
    return f"len({_q(w)})", len(w), 1


def _a_len_list(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 1, 5)
    return f"len({list_text(xs)})", len(xs), 1


def _a_reduce(r: Random) -> tuple[str, Any, int]:
    name = pick(r, ("max", "min", "sum"))
    xs = _ints(r, 2, 4)
    return f"{name}({list_text(xs)})", {"max": max, "min": min, "sum": sum}[name](xs), 1


def _a_index_word(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 2, 5)
    i = below(r, len(w))
    return f"{_q(w)}[{i}]", w[i], 1


def _a_upper(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 1, 5)
    return f"{_q(w)}.upper()", w.upper(), 1


def _a_len_plus(r: Random) -> tuple[str, Any, int]:
    w, k, sign = _word(r, 1, 6), between(r, 1, 9), pick(r, "+-")
    return f"len({_q(w)}){sign}{k}", len(w) + k if sign == "+" else len(w) - k, 2


def _a_len_repeat(r: Random) -> tuple[str, Any, int]:
    w, k = _word(r, 1, 4), between(r, 2, 3)
    return f"len({_q(w)}*{k})", len(w) * k, 2


def _a_sum_minus(r: Random) -> tuple[str, Any, int]:
    xs, k = _ints(r, 2, 4), between(r, 1, 9)
    return f"sum({list_text(xs)})-{k}", sum(xs) - k, 2


def _a_count(r: Random) -> tuple[str, Any, int]:
    w, c = _word(r, 3, 7), pick(r, _LETTERS)
    return f"{_q(w)}.count({_q(c)})", w.count(c), 2


def _a_find(r: Random) -> tuple[str, Any, int]:
    w, c = _word(r, 3, 7), pick(r, _LETTERS)
    return f"{_q(w)}.find({_q(c)})", w.find(c), 2


def _a_slice(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 4, 7)
    a = between(r, 0, len(w) - 2)
    b = between(r, a + 1, len(w))
    return f"{_q(w)}[{a}:{b}]", w[a:b], 2


def _a_concat(r: Random) -> tuple[str, Any, int]:
    w, t = _word(r, 1, 4), _word(r, 1, 4)
    return f"{_q(w)}+{_q(t)}", w + t, 2


def _a_len_concat_lists(r: Random) -> tuple[str, Any, int]:
    xs, ys = _ints(r, 1, 3), _ints(r, 1, 3)
    return f"len({list_text(xs)}+{list_text(ys)})", len(xs) + len(ys), 2


def _a_list_index(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 5)
    v = pick(r, xs)
    return f"{list_text(xs)}.index({v})", xs.index(v), 2


def _a_sorted(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 4)
    return f"sorted({list_text(xs)})", sorted(xs), 2


def _a_len_suffix_times(r: Random) -> tuple[str, Any, int]:
    w, k = _word(r, 3, 7), between(r, 2, 3)
    a = between(r, 1, len(w) - 1)
    return f"len({_q(w)}[{a}:])*{k}", len(w[a:]) * k, 3


def _a_sum_stride(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 6)
    return f"sum({list_text(xs)}[::2])", sum(xs[::2]), 3


def _a_sorted_index(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 5)
    i = pick(r, [*range(len(xs)), -1])
    return f"sorted({list_text(xs)})[{i}]", sorted(xs)[i], 3


def _a_reverse_prefix(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 3, 6)
    k = between(r, 1, len(w) - 1)
    return f"{_q(w)}[::-1][:{k}]", w[::-1][:k], 3


def _a_max_len(r: Random) -> tuple[str, Any, int]:
    w, t, k = _word(r, 1, 6), _word(r, 1, 6), between(r, 1, 9)
    return f"max(len({_q(w)}),len({_q(t)}))+{k}", max(len(w), len(t)) + k, 4


def _a_len_set(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 6)
    return f"len(set({list_text(xs)}))", len(set(xs)), 3


def _a_replace(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 3, 7)
    c = pick(r, w)  # a letter that occurs, so the replace really removes something
    return f"{_q(w)}.replace({_q(c)},'')", w.replace(c, ""), 3


def _a_reverse_index_times(r: Random) -> tuple[str, Any, int]:
    xs, k = _ints(r, 3, 5), between(r, 2, 3)
    i = below(r, len(xs))
    return f"{list_text(xs)}[::-1][{i}]*{k}", xs[::-1][i] * k, 3


def _a_min_times_len(r: Random) -> tuple[str, Any, int]:
    xs, w = _ints(r, 2, 4), _word(r, 1, 5)
    return f"min({list_text(xs)})*len({_q(w)})", min(xs) * len(w), 3


_ASSERT_TEMPLATES: dict[int, tuple[_Template, ...]] = {
    1: (_a_len_word, _a_len_list, _a_reduce, _a_index_word, _a_upper),
    2: (_a_len_plus, _a_len_repeat, _a_sum_minus, _a_count, _a_find, _a_slice, _a_concat,
        _a_len_concat_lists, _a_list_index, _a_sorted),
    3: (_a_len_suffix_times, _a_sum_stride, _a_sorted_index, _a_reverse_prefix, _a_max_len,
        _a_len_set, _a_replace, _a_reverse_index_times, _a_min_times_len),
}


def _format_value(value: Any) -> tuple[str, VerifierSpec]:
    """Canonical answer text: ints plainly, strings single-quoted, int lists without spaces."""
    if isinstance(value, bool) or not isinstance(value, (int, str, list)):
        raise TypeError(f"unsupported answer type {type(value).__name__}")
    if isinstance(value, int):
        return str(value), VERIFIER_INT
    if isinstance(value, str):
        return _q(value), VERIFIER_STRING
    return list_text(value), VERIFIER_EXACT


def generate(rng: Random, difficulty: int) -> Task:
    template = pick(rng, _ASSERT_TEMPLATES[difficulty])
    source, value, operations = template(rng)
    answer, verifier = _format_value(value)
    features = {
        "size": operations,
        "operations": operations,
        "calls": source.count("("),
        "literal_chars": sum(len(text) + len(items)
                             for text, items in _LITERALS.findall(source)),
        "has_slice": int(":" in source),
    }
    return make_task("assert_value", difficulty, f"assert {source} == ?", answer, features,
                     verifier)
