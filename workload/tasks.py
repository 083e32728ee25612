"""Synthetic "code" task families for the reference fleet, with deterministic verifiers.

The reference fleet's tiny Llama-architecture tiers are trained and evaluated on these
tasks, the workload driver serves them, and the gate suites replay them; all three import
this module so that a task means the same thing everywhere. Each task is short (prompt at
most ``MAX_PROMPT_CHARS``, answer at most ``MAX_ANSWER_CHARS``) so a model of a few hundred
thousand parameters with a character tokenizer can learn the easy band, and each family has
three difficulty levels whose prompts are disjoint, so a prompt determines its difficulty.

This module is the shared core and the public front: the family registry, the seeded
streams and mixes, the train / held-out split, ``verify`` and ``safe_eval``. Each family's
generator lives in ``workload.families.<family>``; the ``Task`` record and the format
constants live in ``workload.task_format``; both are re-exported here.

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
import itertools
import operator
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any, Literal

from workload.families import assert_value, bracket_fix, expr_eval, list_ops, var_trace
from workload.families.bracket_fix import bracket_completion
from workload.task_format import (
    END_MARKER,
    MAX_ANSWER_CHARS,
    MAX_PROMPT_CHARS,
    PROMPT_SEPARATOR,
    VERIFIER_EXACT,
    VERIFIER_INT,
    VERIFIER_STRING,
    Task,
    make_task,
    task_id_of,
)

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

HELDOUT_PERCENT = 20  # share of prompt-hash buckets kept out of training
Split = Literal["train", "heldout"]

# Other end-of-text spellings a detokenizer may leave in the output; all cut the answer.
_STOP_STRINGS = (END_MARKER, "\r", "</s>", "<eos>", "<|endoftext|>")
_MAX_OUTPUT_SCAN = 4096  # an output is looked at no further than this (runaway generations)
_MAX_INT_DIGITS = 40  # longer "integers" are refused before int() parses them


@dataclass(frozen=True)
class VerifierResult:
    passed: bool
    reason: str
    extracted: str = ""  # the answer as read from the output (first line, stripped)


# The generator of each family: ``generate(rng, difficulty) -> Task``, drawing only from
# ``rng`` (workload/families/). A new family is a module there plus an entry here and in
# FAMILIES.
_GENERATORS: dict[str, Callable[[Random, int], Task]] = {
    "expr_eval": expr_eval.generate,
    "list_ops": list_ops.generate,
    "bracket_fix": bracket_fix.generate,
    "assert_value": assert_value.generate,
    "var_trace": var_trace.generate,
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
