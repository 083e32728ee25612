"""Synthetic "code" task families for the reference fleet, with deterministic verifiers.

The reference fleet's tiny Llama-architecture tiers are trained and evaluated on these
tasks, the workload driver serves them, and the gate suites replay them; all three import
this module so that a task means the same thing everywhere. Each task is short (prompt at
most ``MAX_PROMPT_CHARS``, answer at most ``MAX_ANSWER_CHARS``) so a model of a few hundred
thousand parameters with a character tokenizer can learn the easy band, and each family has
three difficulty levels whose prompts are disjoint, so a prompt determines its difficulty.

Text format (see ``docs/reference_tasks.md``)::

    eval: 3+4*2\\n=11\\n
    ^prompt ends with PROMPT_SEPARATOR, then the answer, then END_MARKER

Safety: answers are computed while the generator builds each expression (fast, and no
evaluation at all); ``safe_eval`` is an AST-whitelisting evaluator that the tests use to
cross-check those answers. ``verify`` never evaluates model output: it only slices, matches
regular expressions and parses integers.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any, Literal

__all__ = [
    "DIFFICULTIES",
    "END_MARKER",
    "FAMILIES",
    "HELDOUT_PERCENT",
    "MAX_ANSWER_CHARS",
    "MAX_PROMPT_CHARS",
    "PROMPT_SEPARATOR",
    "VERIFIER_EXACT",
    "VERIFIER_INT",
    "VERIFIER_STRING",
    "Task",
    "UnsafeExpressionError",
    "VerifierResult",
    "bracket_completion",
    "extract_answer",
    "format_example",
    "generate_tasks",
    "iter_tasks",
    "make_task",
    "safe_eval",
    "split_of",
    "split_tasks",
    "task_id_of",
    "verify",
]

FAMILIES: tuple[str, ...] = ("expr_eval", "list_ops", "bracket_fix", "assert_value", "var_trace")
DIFFICULTIES: tuple[int, ...] = (1, 2, 3)

# The prompt ends with a newline and "=", so the model's whole completion is the answer and
# the answer's own line holds nothing else; END_MARKER is a newline, which makes "stop at the
# end marker" and "take the first line" the same rule (vLLM: ``stop=["\n"]``).
PROMPT_SEPARATOR = "\n="
END_MARKER = "\n"
MAX_PROMPT_CHARS = 64
MAX_ANSWER_CHARS = 24
HELDOUT_PERCENT = 20  # share of prompt-hash buckets kept out of training

# Verifier specs: how ``verify`` compares an output with ``Task.answer``.
VERIFIER_INT = "int"  # integer literal compared by value; "011" passes, the reason says so
VERIFIER_EXACT = "exact"  # exact match after removing all whitespace
VERIFIER_STRING = "string"  # a quoted string literal ('..' or ".."); its content must match
VerifierSpec = Literal["int", "exact", "string"]
Split = Literal["train", "heldout"]

# Other end-of-text spellings a detokenizer may leave in the output; all cut the answer.
_STOP_STRINGS = (END_MARKER, "\r", "</s>", "<eos>", "<|endoftext|>")
_MAX_OUTPUT_SCAN = 4096  # an output is looked at no further than this (runaway generations)
_MAX_INT_DIGITS = 40  # longer "integers" are refused before int() parses them


@dataclass(frozen=True, slots=True)
class Task:
    """One task. Everything is a function of ``(family, prompt)``; ``task_id`` hashes those.

    ``features`` are numeric properties readable from the prompt before solving it (for
    routing); they are excluded from the hash so that a task can live in sets and dict keys.
    Treat ``features`` as read-only.
    """

    task_id: str
    family: str
    difficulty: int
    prompt: str
    answer: str
    features: dict[str, int] = field(hash=False)
    verifier: VerifierSpec = VERIFIER_EXACT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            task_id=str(data["task_id"]),
            family=str(data["family"]),
            difficulty=int(data["difficulty"]),
            prompt=str(data["prompt"]),
            answer=str(data["answer"]),
            features=dict(data["features"]),
            verifier=data["verifier"],
        )


@dataclass(frozen=True)
class VerifierResult:
    passed: bool
    reason: str
    extracted: str = ""  # the answer as read from the output (first line, stripped)


def task_id_of(family: str, prompt: str) -> str:
    """Stable id: the first 16 hex digits of sha256(family NUL prompt); never Python's hash()."""
    return hashlib.sha256(f"{family}\x00{prompt}".encode()).hexdigest()[:16]


def make_task(
    family: str,
    difficulty: int,
    body: str,
    answer: str,
    features: dict[str, int],
    verifier: VerifierSpec,
) -> Task:
    """Assemble a task from a family generator's parts (adds separator, id, common features)."""
    prompt = body + PROMPT_SEPARATOR
    return Task(
        task_id=task_id_of(family, prompt),
        family=family,
        difficulty=difficulty,
        prompt=prompt,
        answer=answer,
        features={"difficulty": difficulty, "prompt_chars": len(prompt), **features},
        verifier=verifier,
    )


# Random's randint/choice cost about a microsecond each (argument checks, rejection
# sampling), about a fifth of generation time; these draw from one ``rng.random()`` each
# and are just as deterministic for a given seed.


def _below(rng: Random, n: int) -> int:
    """Uniform in 0..n-1."""
    return int(rng.random() * n)


def _between(rng: Random, lo: int, hi: int) -> int:
    """Uniform in lo..hi, both included."""
    return lo + int(rng.random() * (hi - lo + 1))


def _pick(rng: Random, items: Any) -> Any:
    """A uniform element of a non-empty sequence (or string)."""
    return items[int(rng.random() * len(items))]


# --------------------------------------------------------------------------------------
# expr_eval: integer arithmetic with +, -, * and (at level 3) parentheses.
# --------------------------------------------------------------------------------------

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


def _gen_expr_eval(rng: Random, difficulty: int) -> Task:
    (lo, hi), top, ops, (min_mul, max_mul), (min_parens, max_parens) = _EXPR_LEVELS[difficulty]
    count = _between(rng, lo, hi)
    operators = [_pick(rng, ops) for _ in range(count - 1)]
    mul_positions = [i for i, op in enumerate(operators) if op == "*"]
    for i in mul_positions[max_mul:]:  # cap "*" so answers stay short enough to learn
        operators[i] = _pick(rng, "+-")
    if min_mul and not mul_positions:
        operators[_below(rng, count - 1)] = "*"
    operands = [_between(rng, 0, top) for _ in range(count)]
    items: _Expr = [operands[0]]
    for op, value in zip(operators, operands[1:], strict=True):
        items += [op, value]

    parens = _between(rng, min_parens, max_parens)
    if parens:
        # An outer group of 2..count-1 operands (never the whole expression: that would be
        # a no-op), and optionally a second group nested strictly inside it.
        size = _between(rng, 2, count - 1)
        first = _between(rng, 0, count - size)
        inner_size = _between(rng, 2, size - 1) if parens > 1 and size >= 3 else 0
        if inner_size:
            group = items[2 * first : 2 * (first + size) - 1]
            inner_first = _between(rng, 0, size - inner_size)
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


# --------------------------------------------------------------------------------------
# list_ops: sort / dedupe / reverse / max of a short list of non-negative ints.
# --------------------------------------------------------------------------------------

_LIST_OPS = ("sort", "dedupe", "reverse", "max")
# level -> (list lengths, largest value); lengths are disjoint so a prompt names its level
_LIST_LEVELS: dict[int, tuple[tuple[int, int], int]] = {1: ((2, 3), 9), 2: ((4, 5), 49),
                                                        3: ((6, 7), 99)}


def _list_text(values: Iterable[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _gen_list_ops(rng: Random, difficulty: int) -> Task:
    (lo, hi), top = _LIST_LEVELS[difficulty]
    op = _pick(rng, _LIST_OPS)
    values = [_between(rng, 0, top) for _ in range(_between(rng, lo, hi))]
    if op == "dedupe":
        # Random lists rarely repeat a value at the higher ranges; force at least one
        # duplicate so "dedupe" is never the identity.
        i, j = _below(rng, len(values)), _below(rng, len(values) - 1)
        j += j >= i  # two distinct positions
        values[max(i, j)] = values[min(i, j)]
        answer = _list_text(dict.fromkeys(values))  # keeps first occurrences, in order
    elif op == "sort":
        answer = _list_text(sorted(values))
    elif op == "reverse":
        answer = _list_text(reversed(values))
    else:
        answer = str(max(values))
    n = len(values)
    features = {
        "size": n,
        "list_length": n,
        "distinct_values": len(set(values)),
        "max_value_digits": len(str(max(values))),
        "inversions": sum(values[a] > values[b] for a in range(n) for b in range(a + 1, n)),
        "op_index": _LIST_OPS.index(op),
    }
    return make_task("list_ops", difficulty, f"{op}: {_list_text(values)}", answer, features,
                     VERIFIER_EXACT)


# --------------------------------------------------------------------------------------
# bracket_fix: a one-line call whose end was cut off; close every open bracket.
# --------------------------------------------------------------------------------------

_CLOSER = {"(": ")", "[": "]", "{": "}"}
# level -> (opener kinds, the kind that must appear, open brackets to close, closed-arg depth)
_BRACKET_LEVELS: dict[int, tuple[str, str, tuple[int, int], int]] = {
    1: ("(", "(", (1, 2), 1),
    2: ("([", "[", (2, 3), 1),
    3: ("([{", "{", (3, 4), 2),
}


def _open_token(rng: Random, opener: str) -> str:
    # "(" is always a call, as in a line of code; "[" and "{" are list and set displays.
    return _pick(rng, "fgh") + "(" if opener == "(" else opener


def _closed_arg(rng: Random, kinds: str, depth: int) -> str:
    """A complete (balanced) argument: a name, or a bracketed group of 1-2 arguments."""
    if depth <= 0 or rng.random() < 0.6:
        return _pick(rng, "abcde")
    opener = _pick(rng, kinds)
    inner = ",".join(_closed_arg(rng, kinds, depth - 1) for _ in range(_between(rng, 1, 2)))
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


def _gen_bracket_fix(rng: Random, difficulty: int) -> Task:
    kinds, required, (lo, hi), arg_depth = _BRACKET_LEVELS[difficulty]
    for _ in range(1000):  # rejection keeps the length bound and the level's bracket kind
        open_count = _between(rng, lo, hi)
        parts: list[str] = []
        stack: list[str] = []
        for level in range(open_count):
            opener = "(" if level == 0 else _pick(rng, kinds)  # the line is a function call
            parts.append(_open_token(rng, opener))
            stack.append(_CLOSER[opener])
            for _ in range(_between(rng, 0, 1)):  # complete arguments before the next opener
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


# --------------------------------------------------------------------------------------
# assert_value: the value a Python assert needs, over small strings, lists and ints.
# --------------------------------------------------------------------------------------

_LITERALS = re.compile(r"'([^']*)'|\[([0-9,]*)\]")  # string and int-list literals
_LETTERS = "abcde"  # a small alphabet makes count/find/replace meaningful


def _word(rng: Random, lo: int, hi: int) -> str:
    return "".join(_pick(rng, _LETTERS) for _ in range(_between(rng, lo, hi)))


def _ints(rng: Random, lo: int, hi: int) -> list[int]:
    return [_between(rng, 0, 9) for _ in range(_between(rng, lo, hi))]


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
    return f"len({_list_text(xs)})", len(xs), 1


def _a_reduce(r: Random) -> tuple[str, Any, int]:
    name = _pick(r, ("max", "min", "sum"))
    xs = _ints(r, 2, 4)
    return f"{name}({_list_text(xs)})", {"max": max, "min": min, "sum": sum}[name](xs), 1


def _a_index_word(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 2, 5)
    i = _below(r, len(w))
    return f"{_q(w)}[{i}]", w[i], 1


def _a_upper(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 1, 5)
    return f"{_q(w)}.upper()", w.upper(), 1


def _a_len_plus(r: Random) -> tuple[str, Any, int]:
    w, k, sign = _word(r, 1, 6), _between(r, 1, 9), _pick(r, "+-")
    return f"len({_q(w)}){sign}{k}", len(w) + k if sign == "+" else len(w) - k, 2


def _a_len_repeat(r: Random) -> tuple[str, Any, int]:
    w, k = _word(r, 1, 4), _between(r, 2, 3)
    return f"len({_q(w)}*{k})", len(w) * k, 2


def _a_sum_minus(r: Random) -> tuple[str, Any, int]:
    xs, k = _ints(r, 2, 4), _between(r, 1, 9)
    return f"sum({_list_text(xs)})-{k}", sum(xs) - k, 2


def _a_count(r: Random) -> tuple[str, Any, int]:
    w, c = _word(r, 3, 7), _pick(r, _LETTERS)
    return f"{_q(w)}.count({_q(c)})", w.count(c), 2


def _a_find(r: Random) -> tuple[str, Any, int]:
    w, c = _word(r, 3, 7), _pick(r, _LETTERS)
    return f"{_q(w)}.find({_q(c)})", w.find(c), 2


def _a_slice(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 4, 7)
    a = _between(r, 0, len(w) - 2)
    b = _between(r, a + 1, len(w))
    return f"{_q(w)}[{a}:{b}]", w[a:b], 2


def _a_concat(r: Random) -> tuple[str, Any, int]:
    w, t = _word(r, 1, 4), _word(r, 1, 4)
    return f"{_q(w)}+{_q(t)}", w + t, 2


def _a_len_concat_lists(r: Random) -> tuple[str, Any, int]:
    xs, ys = _ints(r, 1, 3), _ints(r, 1, 3)
    return f"len({_list_text(xs)}+{_list_text(ys)})", len(xs) + len(ys), 2


def _a_list_index(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 5)
    v = _pick(r, xs)
    return f"{_list_text(xs)}.index({v})", xs.index(v), 2


def _a_sorted(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 4)
    return f"sorted({_list_text(xs)})", sorted(xs), 2


def _a_len_suffix_times(r: Random) -> tuple[str, Any, int]:
    w, k = _word(r, 3, 7), _between(r, 2, 3)
    a = _between(r, 1, len(w) - 1)
    return f"len({_q(w)}[{a}:])*{k}", len(w[a:]) * k, 3


def _a_sum_stride(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 6)
    return f"sum({_list_text(xs)}[::2])", sum(xs[::2]), 3


def _a_sorted_index(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 5)
    i = _pick(r, [*range(len(xs)), -1])
    return f"sorted({_list_text(xs)})[{i}]", sorted(xs)[i], 3


def _a_reverse_prefix(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 3, 6)
    k = _between(r, 1, len(w) - 1)
    return f"{_q(w)}[::-1][:{k}]", w[::-1][:k], 3


def _a_max_len(r: Random) -> tuple[str, Any, int]:
    w, t, k = _word(r, 1, 6), _word(r, 1, 6), _between(r, 1, 9)
    return f"max(len({_q(w)}),len({_q(t)}))+{k}", max(len(w), len(t)) + k, 4


def _a_len_set(r: Random) -> tuple[str, Any, int]:
    xs = _ints(r, 3, 6)
    return f"len(set({_list_text(xs)}))", len(set(xs)), 3


def _a_replace(r: Random) -> tuple[str, Any, int]:
    w = _word(r, 3, 7)
    c = _pick(r, w)  # a letter that occurs, so the replace really removes something
    return f"{_q(w)}.replace({_q(c)},'')", w.replace(c, ""), 3


def _a_reverse_index_times(r: Random) -> tuple[str, Any, int]:
    xs, k = _ints(r, 3, 5), _between(r, 2, 3)
    i = _below(r, len(xs))
    return f"{_list_text(xs)}[::-1][{i}]*{k}", xs[::-1][i] * k, 3


def _a_min_times_len(r: Random) -> tuple[str, Any, int]:
    xs, w = _ints(r, 2, 4), _word(r, 1, 5)
    return f"min({_list_text(xs)})*len({_q(w)})", min(xs) * len(w), 3


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
    return _list_text(value), VERIFIER_EXACT


def _gen_assert_value(rng: Random, difficulty: int) -> Task:
    template = _pick(rng, _ASSERT_TEMPLATES[difficulty])
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


# --------------------------------------------------------------------------------------
# var_trace: the printed value after a few assignments (straight-line code).
# --------------------------------------------------------------------------------------

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


def _gen_var_trace(rng: Random, difficulty: int) -> Task:
    (lo, hi), names, top, ops, max_mul = _TRACE_LEVELS[difficulty]
    count = _between(rng, lo, hi)
    env: dict[str, int] = {}
    statements: list[str] = []
    muls = 0
    first = names[0]
    env[first] = _between(rng, 0, top)
    statements.append(f"{first}={env[first]}")
    for _ in range(count - 1):
        target = _pick(rng, names)
        assigned = [v for v in names if v in env]  # in name order, for determinism
        # The left operand is always a variable already assigned (so every statement
        # reads state); the right one is another assigned variable or a literal, never the
        # left one again: "a-a" is always 0, a shortcut that skips tracking state.
        left = _pick(rng, assigned)
        right = _pick(rng, [*(v for v in assigned if v != left), str(_between(rng, 0, top))])
        op = _pick(rng, ops)
        if op == "*":
            if muls >= max_mul:  # cap "*" so values stay short
                op = _pick(rng, "+-")
            muls += op == "*"
        if target not in env and rng.random() < 0.5:
            env[target] = _between(rng, 0, top)  # introduce a new variable with a literal
            statements.append(f"{target}={env[target]}")
            continue
        env[target] = _BINARY[op](env[left], env[right] if right in env else int(right))
        statements.append(f"{target}={left}{op}{right}")
    shown = _pick(rng, [v for v in names if v in env])
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


_GENERATORS: dict[str, Callable[[Random, int], Task]] = {
    "expr_eval": _gen_expr_eval,
    "list_ops": _gen_list_ops,
    "bracket_fix": _gen_bracket_fix,
    "assert_value": _gen_assert_value,
    "var_trace": _gen_var_trace,
}


# --------------------------------------------------------------------------------------
# Streams, mixes and the train / held-out split.
# --------------------------------------------------------------------------------------

MixKey = str | tuple[str, int]


def _cells(
    families: Iterable[str] | None,
    difficulties: Iterable[int] | None,
    mix: Mapping[MixKey, float] | None,
) -> tuple[list[tuple[str, int]], list[float]]:
    """The (family, difficulty) cells to draw from and their cumulative weights."""
    fams = list(FAMILIES if families is None else families)
    diffs = list(DIFFICULTIES if difficulties is None else difficulties)
    for f in fams:
        if f not in _GENERATORS:
            raise ValueError(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
    for d in diffs:
        if d not in DIFFICULTIES:
            raise ValueError(f"unknown difficulty {d!r}; known: {DIFFICULTIES}")
    cells = [(f, d) for f in fams for d in diffs]
    if mix is None:
        weights = [1.0] * len(cells)
    else:
        for key, w in mix.items():
            name = key[0] if isinstance(key, tuple) else key
            if name not in _GENERATORS:
                raise ValueError(f"mix names unknown family {name!r}")
            if w < 0:
                raise ValueError(f"mix weight for {key!r} is negative")
        if all(isinstance(k, tuple) for k in mix):
            weights = [float(mix.get((f, d), 0.0)) for f, d in cells]
        elif all(isinstance(k, str) for k in mix):
            weights = [float(mix.get(f, 0.0)) for f, _ in cells]  # spread evenly over levels
        else:
            raise ValueError("mix keys must be all family names or all (family, difficulty)")
    if not cells or sum(weights) <= 0:
        raise ValueError("nothing to generate: no family/difficulty cell has positive weight")
    return cells, list(itertools.accumulate(weights))


def iter_tasks(
    *,
    seed: int | str,
    families: Iterable[str] | None = None,
    difficulties: Iterable[int] | None = None,
    mix: Mapping[MixKey, float] | None = None,
    split: Split | None = None,
) -> Iterator[Task]:
    """An endless, deterministic stream of tasks (one ``random.Random(seed)``, nothing global).

    Each task draws a (family, difficulty) cell by ``mix`` weight (default: uniform over the
    cells ``families`` x ``difficulties``), then the family's generator. ``mix`` maps family
    names (weight spread evenly over the levels) or ``(family, difficulty)`` pairs to
    weights. With ``split``, tasks of the other split are skipped, so training never sees a
    held-out prompt. Prompts can repeat (more often at level 1), as real workloads do.
    """
    cells, cumulative = _cells(families, difficulties, mix)
    total = cumulative[-1]
    rng = Random(seed)
    skipped = 0
    while True:
        family, difficulty = cells[bisect_right(cumulative, rng.random() * total)]
        task = _GENERATORS[family](rng, difficulty)
        if split is not None and split_of(task) != split:
            skipped += 1
            if skipped > 100_000:  # pragma: no cover - would need a one-split cell
                raise RuntimeError(f"no {split} tasks in the requested cells")
            continue
        skipped = 0
        yield task


def generate_tasks(
    n: int,
    *,
    seed: int | str,
    families: Iterable[str] | None = None,
    difficulties: Iterable[int] | None = None,
    mix: Mapping[MixKey, float] | None = None,
    split: Split | None = None,
) -> list[Task]:
    """The first ``n`` tasks of ``iter_tasks`` (so a larger ``n`` extends a smaller one)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    stream = iter_tasks(seed=seed, families=families, difficulties=difficulties, mix=mix,
                        split=split)
    return list(itertools.islice(stream, n))


def split_of(task: Task, *, heldout_percent: int = HELDOUT_PERCENT) -> Split:
    """"heldout" for the prompts whose hash bucket (0..99) is below ``heldout_percent``.

    The bucket depends only on (family, prompt) via ``task_id``, so a prompt is in the same
    split in every run, seed and process, and train and held-out never share a prompt.
    """
    bucket = int(task_id_of(task.family, task.prompt)[:8], 16) % 100
    return "heldout" if bucket < heldout_percent else "train"


def split_tasks(
    tasks: Iterable[Task], *, heldout_percent: int = HELDOUT_PERCENT
) -> tuple[list[Task], list[Task]]:
    """(train, heldout) lists of ``tasks``, by ``split_of``."""
    train: list[Task] = []
    heldout: list[Task] = []
    for task in tasks:
        is_train = split_of(task, heldout_percent=heldout_percent) == "train"
        (train if is_train else heldout).append(task)
    return train, heldout


def format_example(task: Task) -> str:
    """One training example: prompt (ending in the separator), answer, end marker."""
    return task.prompt + task.answer + END_MARKER


# --------------------------------------------------------------------------------------
# Verification: deterministic, and never evaluates the output.
# --------------------------------------------------------------------------------------

_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)  # ASCII digits only: int() takes others too
_STRING_TEXT = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")
_WHITESPACE = re.compile(r"\s+")


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def extract_answer(output: str) -> str:
    """The answer part of a completion: leading whitespace dropped, cut at the first end
    marker (newline) or end-of-text token, surrounding whitespace stripped."""
    text = output[:_MAX_OUTPUT_SCAN].lstrip()
    cut = len(text)
    for stop in _STOP_STRINGS:
        i = text.find(stop)
        if 0 <= i < cut:
            cut = i
    return text[:cut].strip()


def verify(task: Task, output: str) -> VerifierResult:
    """Check a model's completion against ``task.answer`` by the task's verifier spec."""
    got = extract_answer(output)
    if not got:
        return VerifierResult(False, "empty answer", got)
    if task.verifier == VERIFIER_INT:
        return _verify_int(task.answer, got)
    if task.verifier == VERIFIER_STRING:
        return _verify_string(task.answer, got)
    if task.verifier == VERIFIER_EXACT:
        return _verify_exact(task.answer, got)
    return VerifierResult(False, f"unknown verifier spec {task.verifier!r}", got)


def _verify_int(expected_text: str, got: str) -> VerifierResult:
    if len(got) > _MAX_INT_DIGITS + 1 or not _INT_TEXT.fullmatch(got):
        return VerifierResult(False, f"not an integer: {_show(got)}", got)
    value, expected = int(got), int(expected_text)
    if value != expected:
        return VerifierResult(False, f"value {value} != expected {expected}", got)
    if got != expected_text:
        return VerifierResult(
            True, f"value {value} matches expected {expected} (written as {got!r})", got)
    return VerifierResult(True, "exact match", got)


def _verify_exact(expected_text: str, got: str) -> VerifierResult:
    compact = _WHITESPACE.sub("", got)
    if compact != expected_text:
        return VerifierResult(False, f"expected {_show(expected_text)}, got {_show(compact)}",
                              got)
    if compact != got:
        return VerifierResult(True, "matches after removing whitespace", got)
    return VerifierResult(True, "exact match", got)


def _verify_string(expected_text: str, got: str) -> VerifierResult:
    match = _STRING_TEXT.fullmatch(got)
    if match is None:
        return VerifierResult(False, f"not a quoted string literal: {_show(got)}", got)
    content = match.group(1) if match.group(1) is not None else match.group(2)
    expected = expected_text[1:-1]  # canonical answers are '...' with no quotes inside
    if content != expected:
        return VerifierResult(False, f"string {content!r} != expected {expected!r}", got)
    if got != expected_text:
        return VerifierResult(True, f"string {content!r} matches (written as {got})", got)
    return VerifierResult(True, "exact match", got)


# --------------------------------------------------------------------------------------
# safe_eval: a whitelisting evaluator for this module's own expressions.
# --------------------------------------------------------------------------------------


class UnsafeExpressionError(ValueError):
    """The expression uses a construct outside the whitelist (or exceeds a size limit)."""


_SAFE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "max": max, "min": min, "sum": sum, "sorted": sorted, "abs": abs, "set": set,
}
_SAFE_METHODS: dict[type, frozenset[str]] = {
    str: frozenset({"upper", "lower", "count", "find", "index", "replace"}),
    list: frozenset({"count", "index"}),
}
_SAFE_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_SAFE_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_SOURCE = 256
_MAX_INT = 10**15
_MAX_SEQUENCE = 1024


def safe_eval(source: str, names: Mapping[str, int] | None = None) -> Any:
    """Evaluate a small expression built only from whitelisted constructs.

    Allowed: int and str constants, list displays, + - * // % and unary minus, indexing
    and slicing, calls of ``len max min sum sorted abs set``, and the methods
    ``upper lower count find index replace`` (str) and ``count index`` (list). Variables
    are read only from ``names``. Anything else (other names, attributes, calls, keyword
    arguments, lambdas, comprehensions, ...) raises ``UnsafeExpressionError``; runtime
    errors (index out of range, division by zero) raise ``ValueError``. Sizes are bounded
    so that, e.g., ``'a'*10**9`` is refused rather than built.
    """
    if len(source) > _MAX_SOURCE:
        raise UnsafeExpressionError(f"source longer than {_MAX_SOURCE} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise UnsafeExpressionError(f"not an expression: {exc}") from None
    try:
        return _Evaluator(names or {}).eval(tree.body)
    except UnsafeExpressionError:
        raise
    except (TypeError, IndexError, ZeroDivisionError, ValueError, KeyError) as exc:
        raise ValueError(f"evaluation failed: {exc}") from None


class _Evaluator:
    def __init__(self, names: Mapping[str, int]) -> None:
        self.names = names

    def eval(self, node: ast.AST) -> Any:
        value = self._eval(node)
        self._check_size(value)
        return value

    @staticmethod
    def _check_size(value: Any) -> None:
        if isinstance(value, int) and abs(value) > _MAX_INT:
            raise UnsafeExpressionError("integer out of range")
        if isinstance(value, (str, list, set)) and len(value) > _MAX_SEQUENCE:
            raise UnsafeExpressionError("sequence too long")

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if type(node.value) in (int, str):  # not bool, float, bytes, None, Ellipsis
                return node.value
            raise UnsafeExpressionError(f"constant of type {type(node.value).__name__}")
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load) and node.id in self.names:
                return self.names[node.id]
            raise UnsafeExpressionError(f"name {node.id!r} is not allowed")
        if isinstance(node, ast.BinOp):
            op = _SAFE_BINOPS.get(type(node.op))
            if op is None:
                raise UnsafeExpressionError(f"operator {type(node.op).__name__}")
            left, right = self.eval(node.left), self.eval(node.right)
            if isinstance(node.op, ast.Mult):  # bound repetition before building it
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list)) and isinstance(times, int) and (
                            len(seq) * times > _MAX_SEQUENCE):
                        raise UnsafeExpressionError("sequence too long")
            return self._checked(op(left, right))
        if isinstance(node, ast.UnaryOp):
            op = _SAFE_UNARY.get(type(node.op))
            if op is None:
                raise UnsafeExpressionError(f"operator {type(node.op).__name__}")
            return op(self.eval(node.operand))
        if isinstance(node, ast.Subscript):
            return self._checked(self.eval(node.value)[self._index(node.slice)])
        if isinstance(node, ast.Call):
            return self._checked(self._call(node))
        raise UnsafeExpressionError(f"{type(node).__name__} is not allowed")

    def _checked(self, value: Any) -> Any:
        self._check_size(value)
        return value

    def _index(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Slice):
            parts = [None if p is None else self.eval(p) for p in (node.lower, node.upper,
                                                                    node.step)]
            if any(p is not None and type(p) is not int for p in parts):
                raise UnsafeExpressionError("slice bounds must be integers")
            return slice(*parts)
        index = self.eval(node)
        if type(index) is not int:
            raise UnsafeExpressionError("index must be an integer")
        return index

    def _call(self, node: ast.Call) -> Any:
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise UnsafeExpressionError("keyword or starred arguments")
        func = node.func
        if isinstance(func, ast.Name):
            fn = _SAFE_FUNCTIONS.get(func.id)
            if fn is None:
                raise UnsafeExpressionError(f"call of {func.id!r} is not allowed")
            return fn(*[self.eval(a) for a in node.args])
        if isinstance(func, ast.Attribute):
            receiver = self.eval(func.value)
            allowed = _SAFE_METHODS.get(type(receiver), frozenset())
            if func.attr not in allowed:
                raise UnsafeExpressionError(
                    f"method {func.attr!r} of {type(receiver).__name__} is not allowed")
            return getattr(receiver, func.attr)(*[self.eval(a) for a in node.args])
        raise UnsafeExpressionError(f"call of {type(func).__name__} is not allowed")
