"""Span files in, normalised rows and quarantine records out: reading, flattening and
validating telemetry before the warehouse stores it (``telemetry.warehouse``).

Input is either the flat JSON-lines form (one span a line) or OTLP/JSON as the OpenTelemetry
Collector's file exporter writes it (one ``{"resourceSpans": ...}`` object a line, or one
pretty-printed object a file), optionally gzip-compressed. The format is detected per file.

Speed comes from parsing flat JSON lines with ``pyarrow.json`` in large chunks against an
explicit schema and validating whole columns at once. A chunk that Arrow refuses (one line of
invalid JSON, a value of the wrong JSON type) is bisected until the refusing lines sit in
small pieces, which are parsed line by line with orjson; so one bad line costs a few small
re-parses, never the good lines around it. OTLP/JSON goes through the line-by-line path.
Both paths feed the same column rules, so a span is judged the same way whichever path it
took. A span the rules refuse becomes a quarantine record with a stable ``Reason`` code;
``check_span`` applies the same rules to one span dict. Spans following the OpenTelemetry
GenAI semantic conventions are read onto the product's contract before the rules run: a
model call or agent invocation of another name as ``llm.call`` or ``agent.attempt``, and
each absent product attribute from the GenAI key standing in for it (``GENAI_FALLBACKS``).

Hostile input: what a span may carry is bounded (``contracts.spans.SpanLimits``: line size,
nesting depth, attribute count, string length) before any parser builds columns from it.
A cheap count over each chunk's lines (length, ``[`` and ``{`` characters, and ``:``
characters of a long line: they bound depth and attribute count from above) picks the few
lines that might break a bound; only those are parsed singly and measured, and a line
beyond a bound is quarantined and replaced by ``{}`` before Arrow parses the chunk. Arrow reads known fields only (unknown
attributes are skipped, never inferred: inference crashed on deep values and took time
quadratic in the number of distinct keys); features are read from the task lines with
orjson. Format detection is per line: a line holding an OTLP export request is read as
OTLP wherever it sits, so a flat file is never mistaken for OTLP as a whole.

Accounting: every non-blank line (or the one document of a pretty-printed file) ends as
spans stored, duplicates, ignored (``Ignored`` says why) or quarantined (``Reason``); the
counts add up to ``Normalised.seen``.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from contracts.spans import (
    FEATURE_PREFIX,
    GENAI_AGENT_OPERATIONS,
    GENAI_CALL_OPERATIONS,
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_NAMES,
    SPAN_TASK,
    Attr,
    CacheStatus,
    GenAI,
    Outcome,
    Purpose,
    SpanLimits,
)
from contracts.tables import TABLES
from telemetry.warehouse import arrow_schema

__all__ = [
    "BISECT_LEAF_LINES",
    "CHUNK_BYTES",
    "Bounds",
    "Ignored",
    "Normalised",
    "OtlpShapeError",
    "Reason",
    "Rejection",
    "check_span",
    "coerce_feature",
    "otlp_span_to_flat",
    "read_otlp_request",
    "read_span_file",
]

TABLE_OF_SPAN = {SPAN_TASK: "tasks", SPAN_ATTEMPT: "attempts", SPAN_CALL: "calls"}

# Each chunk is parsed by Arrow as one block on one core, several chunks at once. Small
# enough that re-parsing around one bad line is cheap, large enough that the per-batch
# cost of the column rules stays small. Pieces under BISECT_LEAF_LINES go line by line.
CHUNK_BYTES = 8 << 20
BISECT_LEAF_LINES = 256
_ROW_IN_ERROR = re.compile(r" in row (\d+)")
NS_PER_DAY = 86_400 * 10**9
INT64_MAX = 2**63 - 1


class Reason(StrEnum):
    """Why a span was quarantined. The values are stable codes: dashboards count them."""

    INVALID_JSON = "invalid_json"
    BAD_OTLP = "bad_otlp"
    BAD_ATTRIBUTES = "bad_attributes"
    MISSING_NAME = "missing_name"
    MISSING_TRACE_ID = "missing_trace_id"
    MISSING_SPAN_ID = "missing_span_id"
    BAD_ID = "bad_id"
    BAD_TIMESTAMPS = "bad_timestamps"
    MISSING_TASK_ID = "missing_task_id"
    UNKNOWN_OUTCOME = "unknown_outcome"
    UNKNOWN_PURPOSE = "unknown_purpose"
    UNKNOWN_CACHE_STATUS = "unknown_cache_status"
    BAD_ATTEMPT = "bad_attempt"
    MISSING_TIER = "missing_tier"
    NEGATIVE_TOKENS = "negative_tokens"
    BAD_TOKENS = "bad_tokens"
    BAD_PROPENSITY = "bad_propensity"
    BAD_BOOL = "bad_bool"
    BAD_COST = "bad_cost"
    BAD_STRING = "bad_string"
    BAD_FEATURE = "bad_feature"
    # beyond a bound of SpanLimits: what a span may carry
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    TOO_MANY_ATTRIBUTES = "too_many_attributes"
    STRING_TOO_LONG = "string_too_long"
    # beyond a bound of SpanLimits: what a span may claim
    IMPLAUSIBLE_COST = "implausible_cost"
    IMPLAUSIBLE_TOKENS = "implausible_tokens"
    IMPLAUSIBLE_TIME = "implausible_time"


class Ignored(StrEnum):
    """Why input was read and not stored, without being at fault (stable codes too)."""

    OTHER_SPAN_NAME = "other_span_name"  # the SDK's own spans, a framework's
    GENAI_OTHER_OPERATION = "genai_other_operation"  # a GenAI span that is no model call
    EMPTY_OTLP_REQUEST = "empty_otlp_request"  # an export request that holds no span


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    message: str


@dataclass(frozen=True)
class Bounds:
    """The limits one ingest judges by, and its clock (for ``max_future_s``)."""

    limits: SpanLimits = field(default_factory=SpanLimits)
    now_ns: int = field(default_factory=time.time_ns)

    @property
    def latest_start_ns(self) -> int:
        return self.now_ns + self.limits.max_future_s * 10**9


# ------------------------------------------------------------------------------ schemas
# The JSON type every known attribute must have. Arrow parses against this, so a value of
# another JSON type makes Arrow refuse the chunk and the line-by-line path judge that line.
_STR, _INT, _FLOAT, _BOOL = "str", "int", "float", "bool"
ATTRIBUTE_KINDS: dict[str, str] = {
    Attr.TASK_ID: _STR, Attr.POLICY_VERSION: _STR, Attr.TIER: _STR, Attr.VARIANT: _STR,
    Attr.ADAPTER: _STR, Attr.ATTEMPT: _INT, Attr.COST_USD: _FLOAT, Attr.FAMILY: _STR,
    Attr.TEAM: _STR, Attr.REPO: _STR, Attr.AGENT: _STR, Attr.OUTCOME: _STR,
    Attr.VERIFIER_PASSED: _BOOL, Attr.REVIEW_ACCEPTED: _BOOL, Attr.VERIFIER_COST_USD: _FLOAT,
    Attr.PASSED: _BOOL, Attr.PURPOSE: _STR, Attr.PROPENSITY: _FLOAT,
    Attr.REQUEST_MODEL: _STR, Attr.INPUT_TOKENS: _INT, Attr.OUTPUT_TOKENS: _INT,
    Attr.CACHE: _STR, Attr.CACHED_INPUT_TOKENS: _INT,
    # GenAI semantic conventions: read where the product's own attribute is absent
    GenAI.OPERATION_NAME: _STR, GenAI.RESPONSE_MODEL: _STR, GenAI.CONVERSATION_ID: _STR,
    GenAI.CACHE_READ_INPUT_TOKENS: _INT, GenAI.CACHE_READ_INPUT_TOKENS_OLD: _INT,
    GenAI.INPUT_TOKENS_OLD: _INT, GenAI.OUTPUT_TOKENS_OLD: _INT,
}
# product attribute <- the GenAI keys that stand in for it when it is absent, in order
GENAI_FALLBACKS: dict[str, tuple[str, ...]] = {
    Attr.TASK_ID: (GenAI.CONVERSATION_ID,),
    Attr.REQUEST_MODEL: (GenAI.RESPONSE_MODEL,),
    Attr.INPUT_TOKENS: (GenAI.INPUT_TOKENS_OLD,),
    Attr.OUTPUT_TOKENS: (GenAI.OUTPUT_TOKENS_OLD,),
    Attr.CACHED_INPUT_TOKENS: (GenAI.CACHE_READ_INPUT_TOKENS, GenAI.CACHE_READ_INPUT_TOKENS_OLD),
}
_TOP_KINDS = {"name": _STR, "trace_id": _STR, "span_id": _STR, "parent_span_id": _STR,
              "start_time_unix_nano": _INT, "end_time_unix_nano": _INT}
_KIND_ARROW = {_STR: pa.string(), _INT: pa.int64(), _FLOAT: pa.float64(), _BOOL: pa.bool_()}
_FLAT_SCHEMA = pa.schema(
    [(k, _KIND_ARROW[v]) for k, v in _TOP_KINDS.items()]
    + [("attributes", pa.struct([(k, _KIND_ARROW[v]) for k, v in ATTRIBUTE_KINDS.items()]))]
)


# -------------------------------------------------------------------- scalar coercions
class _Bad:
    """Marker for a value present but of the wrong JSON type."""


BAD = _Bad()


def coerce_str(v: Any) -> Any:
    """Strings as they are; integers as their decimal text (``policy_version: 3``)."""
    if isinstance(v, str):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return BAD


def coerce_int(v: Any) -> Any:
    """JSON integers within int64 only: 3.0, "3" and true are not integers."""
    if isinstance(v, int) and not isinstance(v, bool) and -INT64_MAX - 1 <= v <= INT64_MAX:
        return v
    return BAD


def coerce_float(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return BAD


def coerce_bool(v: Any) -> Any:
    return v if isinstance(v, bool) else BAD


def coerce_feature(v: Any) -> Any:
    """A feature is a number, string or bool. An integral float is written as an integer,
    so ``3`` and ``3.0`` (or a column Arrow widened to double) give the same JSON."""
    if isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            return BAD
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    return BAD


_COERCE = {_STR: coerce_str, _INT: coerce_int, _FLOAT: coerce_float, _BOOL: coerce_bool}


# ---------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class _Col:
    """One field over a batch: typed values (null where absent or of the wrong type) and
    the mask of rows whose value was present but of the wrong type."""

    values: pa.Array
    wrong_type: np.ndarray

    @property
    def null(self) -> np.ndarray:
        return _np(self.values.is_null())


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as a numpy mask, null counting as False."""
    if mask.null_count:
        mask = pc.fill_null(mask, False)
    return mask.to_numpy(zero_copy_only=False)


class _NeedsLinePath(Exception):
    """Arrow's column types make a per-value decision impossible; judge these lines singly."""


def _col_from_arrow(arr: pa.Array, kind: str) -> _Col:
    target = _KIND_ARROW[kind]
    n = len(arr)
    if arr.type == target:
        return _Col(arr, np.zeros(n, bool))
    if pa.types.is_null(arr.type):
        return _Col(pa.nulls(n, target), np.zeros(n, bool))
    if kind == _FLOAT and pa.types.is_integer(arr.type):
        return _Col(arr.cast(target), np.zeros(n, bool))
    raise _NeedsLinePath(f"{arr.type} for {kind}")


def _col_from_values(values: Sequence[Any], kind: str) -> _Col:
    coerce = _COERCE[kind]
    out: list[Any] = []
    wrong = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        c = coerce(v)
        if c is BAD:
            wrong[i] = True
            out.append(None)
        else:
            out.append(c)
    return _Col(pa.array(out, type=_KIND_ARROW[kind]), wrong)


@dataclass
class _RawBatch:
    """Spans as columns before any rule ran; built by the Arrow path or the line path."""

    n: int
    top: dict[str, Any]  # field -> pa.Array (Arrow path) or list (line path)
    attrs: dict[str, Any]  # known attribute key -> same
    from_arrow: bool
    # row indices -> [(line number, original line text or object)] for the quarantine
    origin: Callable[[Sequence[int]], list[tuple[int, Any]]]
    # row indices -> each row's span as a dict (its features are read from it)
    spans: Callable[[Sequence[int]], list[Any]]

    def col(self, key: str, kind: str, *, top: bool = False) -> _Col:
        source = self.top if top else self.attrs
        values = source.get(key)
        if values is None:
            return _Col(pa.nulls(self.n, _KIND_ARROW[kind]), np.zeros(self.n, bool))
        if self.from_arrow:
            return _col_from_arrow(values, kind)
        return _col_from_values(values, kind)

    def take(self, rows: np.ndarray) -> _RawBatch:
        """The batch of ``rows`` only (known columns: scalars, never a nested value)."""
        rows = np.asarray(rows, np.int64)
        index = pa.array(rows, pa.int64())

        def pick(values: Any) -> Any:
            if self.from_arrow:
                return values.take(index)
            return [values[i] for i in rows]

        outer_origin, outer_spans = self.origin, self.spans
        return _RawBatch(
            n=len(rows),
            top={k: pick(v) for k, v in self.top.items()},
            attrs={k: pick(v) for k, v in self.attrs.items()},
            from_arrow=self.from_arrow,
            origin=lambda idx: outer_origin([int(rows[i]) for i in idx]),
            spans=lambda idx: outer_spans([int(rows[i]) for i in idx]),
        )


# ------------------------------------------------------------------------------ rules
class _Cols:
    """The coerced fields of one span kind over a batch, as the rules read them."""

    def __init__(self, batch: _RawBatch, keys: Iterable[str], bounds: Bounds):
        self.n = batch.n
        self.bounds = bounds
        self.c: dict[str, _Col] = {k: batch.col(k, kind, top=True) for k, kind in
                                   _TOP_KINDS.items()}
        self.c.update({k: batch.col(k, ATTRIBUTE_KINDS[k]) for k in keys})

    def __getitem__(self, key: str) -> _Col:
        return self.c[key]

    def show(self, key: str, i: int) -> str:
        """The value of ``key`` on row ``i`` as a message shows it."""
        col = self.c[key]
        if col.wrong_type[i]:
            return "<value of the wrong JSON type>"
        return repr(col.values[i].as_py())


def _absent_str(col: _Col) -> np.ndarray:
    """Absent, null or the empty string (a wrong JSON type is reported by another rule)."""
    empty = _np(pc.equal(col.values, ""))
    return (col.null & ~col.wrong_type) | empty


def _hex_bad(col: _Col, length: int, *, optional: bool) -> np.ndarray:
    lowered = pc.ascii_lower(col.values)
    valid = _np(pc.match_substring_regex(lowered, f"^[0-9a-f]{{{length}}}$"))
    zero = _np(pc.equal(lowered, "0" * length))
    present = ~col.null
    if optional:
        present &= ~_np(pc.equal(col.values, ""))
    return col.wrong_type | (present & (~valid | zero))


def _num(col: _Col, fill: float) -> np.ndarray:
    return pc.fill_null(col.values, fill).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class Rule:
    """One check of one field group: rows where ``check`` is True are quarantined."""

    reason: Reason
    check: Callable[[_Cols], np.ndarray]
    message: Callable[[_Cols, int], str]


def rule_missing_trace_id(c: _Cols) -> np.ndarray:
    return _absent_str(c["trace_id"])


def rule_missing_span_id(c: _Cols) -> np.ndarray:
    return _absent_str(c["span_id"])


def rule_bad_id(c: _Cols) -> np.ndarray:
    return (_hex_bad(c["trace_id"], 32, optional=False)
            | _hex_bad(c["span_id"], 16, optional=False)
            | _hex_bad(c["parent_span_id"], 16, optional=True))


def rule_bad_timestamps(c: _Cols) -> np.ndarray:
    start, end = c["start_time_unix_nano"], c["end_time_unix_nano"]
    s, e = _num(start, 0), _num(end, 0)
    return start.null | end.null | (s <= 0) | (e < s)


def _start_end(c: _Cols) -> tuple[np.ndarray, np.ndarray]:
    return _num(c["start_time_unix_nano"], 0), _num(c["end_time_unix_nano"], 0)


def rule_implausible_time(c: _Cols) -> np.ndarray:
    s, e = _start_end(c)
    limits = c.bounds.limits
    with np.errstate(over="ignore"):
        long = (e - s) > limits.max_duration_s * 10**9
    return (s < limits.earliest_start_ns) | (s > c.bounds.latest_start_ns) | long


def _time_msg(c: _Cols, i: int) -> str:
    s, e = (int(x[i]) for x in _start_end(c))
    limits = c.bounds.limits
    when = _iso(s)
    if s < limits.earliest_start_ns:
        return f"start {when} is before earliest_start={limits.earliest_start}"
    if s > c.bounds.latest_start_ns:
        return (f"start {when} is more than max_future_s={limits.max_future_s} past the "
                f"ingest's clock ({_iso(c.bounds.now_ns)})")
    return (f"the span lasts {(e - s) / 1e9:,.0f} s, more than "
            f"max_duration_s={limits.max_duration_s}")


def _iso(ns: int) -> str:
    try:
        return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"


def rule_missing_task_id(c: _Cols) -> np.ndarray:
    col = c[Attr.TASK_ID]
    return _absent_str(col) | col.wrong_type


def _enum_bad(col: _Col, allowed: type[StrEnum]) -> np.ndarray:
    return ~_np(pc.is_in(col.values, value_set=pa.array([str(v) for v in allowed])))


def rule_unknown_outcome(c: _Cols) -> np.ndarray:
    return _enum_bad(c[Attr.OUTCOME], Outcome)


def rule_unknown_purpose(c: _Cols) -> np.ndarray:
    return _enum_bad(c[Attr.PURPOSE], Purpose)


def rule_unknown_cache_status(c: _Cols) -> np.ndarray:
    return _enum_bad(c[Attr.CACHE], CacheStatus)


def rule_bad_attempt(c: _Cols) -> np.ndarray:
    col = c[Attr.ATTEMPT]
    return col.null | (_num(col, 0) < 1)


def rule_missing_tier(c: _Cols) -> np.ndarray:
    col = c[Attr.TIER]
    return _absent_str(col) | col.wrong_type


_TOKEN_KEYS = (Attr.INPUT_TOKENS, Attr.OUTPUT_TOKENS, Attr.CACHED_INPUT_TOKENS)


def rule_negative_tokens(c: _Cols) -> np.ndarray:
    bad = np.zeros(c.n, bool)
    for key in _TOKEN_KEYS:
        bad |= _num(c[key], 0) < 0
    return bad


def rule_bad_tokens(c: _Cols) -> np.ndarray:
    inp, out, cached = (c[k] for k in _TOKEN_KEYS)
    return (inp.null | out.null | cached.wrong_type
            | (_num(cached, 0) > _num(inp, INT64_MAX)))


def rule_implausible_tokens(c: _Cols) -> np.ndarray:
    bad = np.zeros(c.n, bool)
    for key in _TOKEN_KEYS:
        bad |= _num(c[key], 0) > c.bounds.limits.max_tokens
    return bad


def rule_bad_propensity(c: _Cols) -> np.ndarray:
    col = c[Attr.PROPENSITY]
    p = _num(col, 1.0)
    with np.errstate(invalid="ignore"):
        return col.wrong_type | ~((p > 0) & (p <= 1))


def _bool_rule(*keys: str) -> Callable[[_Cols], np.ndarray]:
    def rule_bad_bool(c: _Cols) -> np.ndarray:
        bad = np.zeros(c.n, bool)
        for key in keys:
            bad |= c[key].wrong_type
        return bad

    return rule_bad_bool


def _cost_rule(key: str) -> Callable[[_Cols], np.ndarray]:
    def rule_bad_cost(c: _Cols) -> np.ndarray:
        col = c[key]
        v = _num(col, 0.0)
        return col.wrong_type | ~np.isfinite(v) | (v < 0)

    return rule_bad_cost


def _implausible_cost_rule(key: str) -> Callable[[_Cols], np.ndarray]:
    def rule_implausible_cost(c: _Cols) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return _num(c[key], 0.0) > c.bounds.limits.max_cost_usd

    return rule_implausible_cost


def _string_rule(*keys: str) -> Callable[[_Cols], np.ndarray]:
    def rule_bad_string(c: _Cols) -> np.ndarray:
        bad = np.zeros(c.n, bool)
        for key in keys:
            bad |= c[key].wrong_type
        return bad

    return rule_bad_string


def _first_wrong(c: _Cols, i: int, keys: Iterable[str]) -> str:
    return next((k for k in keys if c[k].wrong_type[i]), "")


_ID_MSG = ("trace_id must be 32 and span_id/parent_span_id 16 hex digits, not all zero "
           "(trace_id={t}, span_id={s}, parent_span_id={p})")
_COMMON_RULES = [
    Rule(Reason.MISSING_TRACE_ID, rule_missing_trace_id, lambda c, i: "span has no trace_id"),
    Rule(Reason.MISSING_SPAN_ID, rule_missing_span_id, lambda c, i: "span has no span_id"),
    Rule(Reason.BAD_ID, rule_bad_id, lambda c, i: _ID_MSG.format(
        t=c.show("trace_id", i), s=c.show("span_id", i), p=c.show("parent_span_id", i))),
    Rule(Reason.BAD_TIMESTAMPS, rule_bad_timestamps, lambda c, i: (
        "start/end_time_unix_nano must be integers with 0 < start <= end "
        f"(start={c.show('start_time_unix_nano', i)}, end={c.show('end_time_unix_nano', i)})")),
    Rule(Reason.IMPLAUSIBLE_TIME, rule_implausible_time, _time_msg),
    Rule(Reason.MISSING_TASK_ID, rule_missing_task_id, lambda c, i: (
        f"{Attr.TASK_ID} must be a non-empty string (got {c.show(Attr.TASK_ID, i)})")),
]


def _cost_msg(key: str) -> Callable[[_Cols, int], str]:
    return lambda c, i: f"{key} must be a finite number >= 0 (got {c.show(key, i)})"


def _implausible_cost_msg(key: str) -> Callable[[_Cols, int], str]:
    return lambda c, i: (f"{key}={c.show(key, i)} is more than "
                         f"max_cost_usd={c.bounds.limits.max_cost_usd:g}")


def _implausible_tokens_msg(c: _Cols, i: int) -> str:
    return (", ".join(f"{k}={c.show(k, i)}" for k in _TOKEN_KEYS)
            + f": a count above max_tokens={c.bounds.limits.max_tokens:,}")


def _bool_msg(*keys: str) -> Callable[[_Cols, int], str]:
    return lambda c, i: f"{_first_wrong(c, i, keys)} must be true or false"


def _string_msg(*keys: str) -> Callable[[_Cols, int], str]:
    return lambda c, i: f"{_first_wrong(c, i, keys)} must be a string"


def _enum_msg(key: str, allowed: type[StrEnum]) -> Callable[[_Cols, int], str]:
    names = " | ".join(str(v) for v in allowed)
    return lambda c, i: f"{key} must be one of {names} (got {c.show(key, i)})"


_TASK_STRINGS = (Attr.FAMILY, Attr.TEAM, Attr.REPO, Attr.AGENT, Attr.POLICY_VERSION)
_ATTEMPT_STRINGS = (Attr.VARIANT, Attr.ADAPTER, Attr.POLICY_VERSION)
_CALL_STRINGS = (Attr.REQUEST_MODEL, Attr.VARIANT, Attr.ADAPTER, Attr.POLICY_VERSION)
_ATTEMPT_MSG = "{key} must be an integer >= 1 (got {value})"

COMMON_RULES: list[Rule] = _COMMON_RULES
KIND_RULES: dict[str, list[Rule]] = {
    SPAN_TASK: [
        Rule(Reason.UNKNOWN_OUTCOME, rule_unknown_outcome, _enum_msg(Attr.OUTCOME, Outcome)),
        Rule(Reason.BAD_BOOL, _bool_rule(Attr.VERIFIER_PASSED, Attr.REVIEW_ACCEPTED),
             _bool_msg(Attr.VERIFIER_PASSED, Attr.REVIEW_ACCEPTED)),
        Rule(Reason.BAD_COST, _cost_rule(Attr.VERIFIER_COST_USD),
             _cost_msg(Attr.VERIFIER_COST_USD)),
        Rule(Reason.IMPLAUSIBLE_COST, _implausible_cost_rule(Attr.VERIFIER_COST_USD),
             _implausible_cost_msg(Attr.VERIFIER_COST_USD)),
        Rule(Reason.BAD_STRING, _string_rule(*_TASK_STRINGS), _string_msg(*_TASK_STRINGS)),
    ],
    SPAN_ATTEMPT: [
        Rule(Reason.BAD_ATTEMPT, rule_bad_attempt, lambda c, i: _ATTEMPT_MSG.format(
            key=Attr.ATTEMPT, value=c.show(Attr.ATTEMPT, i))),
        Rule(Reason.MISSING_TIER, rule_missing_tier,
             lambda c, i: f"{Attr.TIER} must be a non-empty string (got {c.show(Attr.TIER, i)})"),
        Rule(Reason.UNKNOWN_PURPOSE, rule_unknown_purpose, _enum_msg(Attr.PURPOSE, Purpose)),
        Rule(Reason.BAD_BOOL, _bool_rule(Attr.PASSED), _bool_msg(Attr.PASSED)),
        Rule(Reason.BAD_PROPENSITY, rule_bad_propensity, lambda c, i: (
            f"{Attr.PROPENSITY} must be a number in (0, 1] (got {c.show(Attr.PROPENSITY, i)})")),
        Rule(Reason.BAD_COST, _cost_rule(Attr.COST_USD), _cost_msg(Attr.COST_USD)),
        Rule(Reason.IMPLAUSIBLE_COST, _implausible_cost_rule(Attr.COST_USD),
             _implausible_cost_msg(Attr.COST_USD)),
        Rule(Reason.BAD_STRING, _string_rule(*_ATTEMPT_STRINGS), _string_msg(*_ATTEMPT_STRINGS)),
    ],
    SPAN_CALL: [
        Rule(Reason.MISSING_TIER, rule_missing_tier,
             lambda c, i: f"{Attr.TIER} must be a non-empty string (got {c.show(Attr.TIER, i)})"),
        Rule(Reason.BAD_ATTEMPT, rule_bad_attempt, lambda c, i: _ATTEMPT_MSG.format(
            key=Attr.ATTEMPT, value=c.show(Attr.ATTEMPT, i))),
        Rule(Reason.NEGATIVE_TOKENS, rule_negative_tokens, lambda c, i: (
            "token counts must be >= 0 (" + ", ".join(
                f"{k}={c.show(k, i)}" for k in _TOKEN_KEYS) + ")")),
        Rule(Reason.BAD_TOKENS, rule_bad_tokens, lambda c, i: (
            f"{Attr.INPUT_TOKENS} and {Attr.OUTPUT_TOKENS} must be integers and "
            f"{Attr.CACHED_INPUT_TOKENS} an integer <= input tokens (" + ", ".join(
                f"{k}={c.show(k, i)}" for k in _TOKEN_KEYS) + ")")),
        Rule(Reason.IMPLAUSIBLE_TOKENS, rule_implausible_tokens, _implausible_tokens_msg),
        Rule(Reason.UNKNOWN_CACHE_STATUS, rule_unknown_cache_status,
             _enum_msg(Attr.CACHE, CacheStatus)),
        Rule(Reason.BAD_COST, _cost_rule(Attr.COST_USD), _cost_msg(Attr.COST_USD)),
        Rule(Reason.IMPLAUSIBLE_COST, _implausible_cost_rule(Attr.COST_USD),
             _implausible_cost_msg(Attr.COST_USD)),
        Rule(Reason.BAD_STRING, _string_rule(*_CALL_STRINGS), _string_msg(*_CALL_STRINGS)),
    ],
}

_ALL_KEYS = tuple(ATTRIBUTE_KINDS)


def _apply_rules(rules: Sequence[Rule], cols: _Cols, rows: np.ndarray,
                 rejected: np.ndarray) -> list[tuple[int, Rejection]]:
    """Apply ``rules`` to the rows in the ``rows`` mask; the first failing rule of a row
    wins. ``rejected`` (rows already quarantined) is updated in place."""
    rejections: list[tuple[int, Rejection]] = []
    for rule in rules:
        bad = rule.check(cols) & rows & ~rejected
        if bad.any():
            for i in np.flatnonzero(bad):
                rejections.append((int(i), Rejection(rule.reason, rule.message(cols, int(i)))))
            rejected |= bad
    return rejections


# --------------------------------------------------------------------------- features
_PLAIN_FEATURE = frozenset({str, int, bool})  # written as they are
_KNOWN_KEYS = frozenset(ATTRIBUTE_KINDS)


def _features_json(spans: Sequence[Any]) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Each span's features (its ``autopilot.feature.*`` attributes, the prefix removed) as
    a JSON object string (keys sorted, integral floats written as integers, null values
    left out), the mask of spans with a feature that is not a finite number, a string or
    a bool, and the first such feature (in key order) per span."""
    n = len(spans)
    bad = np.zeros(n, bool)
    bad_key = [""] * n
    texts: list[str] = []
    cut = len(FEATURE_PREFIX)
    for i, span in enumerate(spans):
        attrs = span.get("attributes") if isinstance(span, dict) else None
        features = ({k[cut:]: attrs[k] for k in attrs.keys() - _KNOWN_KEYS
                     if k.startswith(FEATURE_PREFIX)} if isinstance(attrs, dict) else None)
        if not features:
            texts.append("{}")
            continue
        if all(type(v) in _PLAIN_FEATURE for v in features.values()):
            texts.append(orjson.dumps(features, option=orjson.OPT_SORT_KEYS).decode())
            continue
        clean: dict[str, Any] = {}
        wrong: list[str] = []
        for name, value in features.items():
            if value is None:
                continue
            c = coerce_feature(value)
            if c is BAD:
                wrong.append(name)
            else:
                clean[name] = c
        if wrong:
            bad[i] = True
            bad_key[i] = min(wrong)
            texts.append("{}")
        else:
            texts.append(orjson.dumps(clean, option=orjson.OPT_SORT_KEYS).decode())
    return pa.array(texts, pa.string()), bad, bad_key


# ----------------------------------------------------------------------- normalising
@dataclass
class Normalised:
    """The outcome of judging raw batches, and the bounds they are judged by."""

    bounds: Bounds = field(default_factory=Bounds)
    tables: dict[str, list[pa.Table]] = field(default_factory=lambda: {t: [] for t in TABLES})
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    ignored_by: Counter[str] = field(default_factory=Counter)
    seen: int = 0

    @property
    def ignored(self) -> int:
        return sum(self.ignored_by.values())

    def ignore(self, reason: Ignored, count: int = 1) -> None:
        if count:
            self.ignored_by[str(reason)] += count

    def reject(self, reason: Reason, message: str, source: str, line: int, original: Any):
        self.quarantine.append({"reason": str(reason), "message": message, "source": source,
                                "line": line, "original": original})

    def part(self) -> Normalised:
        """An empty outcome judged by the same bounds (merged into this one later)."""
        return Normalised(bounds=self.bounds)


def _days(start_ns: np.ndarray) -> pa.Array:
    """UTC day (YYYY-MM-DD) of each start time; each distinct day is formatted once."""
    if len(start_ns) == 0:
        return pa.array([], pa.string())
    day_numbers = start_ns // NS_PER_DAY
    low, high = int(day_numbers.min()), int(day_numbers.max())
    if high - low > 100_000:  # nonsense far-apart times: one label per distinct day
        uniques, inverse = np.unique(day_numbers, return_inverse=True)
    else:
        uniques, inverse = np.arange(low, high + 1), day_numbers - low
    epoch = date(1970, 1, 1).toordinal()
    names = []
    for d in uniques:
        try:
            names.append(date.fromordinal(epoch + int(d)).isoformat())
        except (ValueError, OverflowError):
            names.append("9999-12-31")  # beyond the calendar: never reached after the rules
    return pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)),
                                          pa.array(names, pa.string())).cast(pa.string())


def _lower_id(values: pa.Array) -> pa.Array:
    return pc.ascii_lower(values)


def _to_table(kind: str, cols: _Cols, day: pa.Array, features: pa.Array | None,
              keep: np.ndarray) -> pa.Table:
    """The stored rows of one span kind: columns renamed and typed, only ``keep`` rows."""
    keep_arrow = pa.array(keep)

    def v(key: str) -> pa.Array:
        return cols[key].values.filter(keep_arrow)

    def nan(key: str) -> pa.Array:
        return pc.fill_null(v(key), float("nan"))

    parent = v("parent_span_id")
    parent = pc.if_else(pc.equal(parent, ""), pa.scalar(None, pa.string()), _lower_id(parent))
    common = {
        "span_id": _lower_id(v("span_id")),
        "trace_id": _lower_id(v("trace_id")),
        "parent_span_id": parent,
        "task_id": v(Attr.TASK_ID),
        "day": day.filter(keep_arrow),
        "start_ns": v("start_time_unix_nano"),
        "end_ns": v("end_time_unix_nano"),
        "policy_version": v(Attr.POLICY_VERSION),
    }
    if kind == SPAN_TASK:
        data = {**common, "family": v(Attr.FAMILY), "team": v(Attr.TEAM),
                "repo": v(Attr.REPO), "agent": v(Attr.AGENT), "outcome": v(Attr.OUTCOME),
                "verifier_passed": v(Attr.VERIFIER_PASSED),
                "review_accepted": v(Attr.REVIEW_ACCEPTED),
                "verifier_cost_usd": nan(Attr.VERIFIER_COST_USD), "features": features}
    elif kind == SPAN_ATTEMPT:
        data = {**common, "attempt": v(Attr.ATTEMPT), "tier": v(Attr.TIER),
                "variant": v(Attr.VARIANT), "adapter": v(Attr.ADAPTER),
                "passed": v(Attr.PASSED), "purpose": v(Attr.PURPOSE),
                "propensity": nan(Attr.PROPENSITY), "cost_usd": nan(Attr.COST_USD)}
    else:
        data = {**common, "attempt": v(Attr.ATTEMPT), "model": v(Attr.REQUEST_MODEL),
                "tier": v(Attr.TIER), "variant": v(Attr.VARIANT), "adapter": v(Attr.ADAPTER),
                "input_tokens": v(Attr.INPUT_TOKENS), "output_tokens": v(Attr.OUTPUT_TOKENS),
                "cached_input_tokens": pc.fill_null(v(Attr.CACHED_INPUT_TOKENS), 0),
                "cache": v(Attr.CACHE), "cost_usd": nan(Attr.COST_USD)}
    schema = arrow_schema(TABLE_OF_SPAN[kind])
    return pa.Table.from_arrays([data[name] for name in schema.names], schema=schema)



def _judge(batch: _RawBatch, source: str, out: Normalised) -> None:
    """Apply the rules to a raw batch: common rules once over every span of a known name,
    then each kind's rules over its rows; collect stored rows and quarantined spans."""
    out.seen += batch.n
    if batch.n == 0:
        return
    cols = _Cols(batch, _ALL_KEYS, out.bounds)
    name = cols["name"]
    missing = name.null | _np(pc.equal(name.values, ""))
    rejections: list[tuple[int, Rejection]] = [
        (int(i), Rejection(Reason.MISSING_NAME, "span has no name (or one that is not a string)"))
        for i in np.flatnonzero(missing)]
    kind_rows = {kind: _np(pc.equal(name.values, kind)) for kind in SPAN_NAMES}
    mapped, genai_other = _genai_kinds(cols, missing)
    for kind, rows in mapped.items():
        kind_rows[kind] |= rows
    _genai_fallbacks(cols, mapped[SPAN_CALL])
    known = np.logical_or.reduce(list(kind_rows.values()))
    out.ignore(Ignored.GENAI_OTHER_OPERATION, int(genai_other.sum()))
    out.ignore(Ignored.OTHER_SPAN_NAME, int((~known & ~missing & ~genai_other).sum()))
    rejected = ~known  # ignored and nameless spans are not judged further
    rejections += _apply_rules(COMMON_RULES, cols, known, rejected)
    day = _days(_num(cols["start_time_unix_nano"], 0))
    for kind, rows in kind_rows.items():
        if not rows.any():
            continue
        rejections += _apply_rules(KIND_RULES[kind], cols, rows, rejected)
        features = None
        if kind == SPAN_TASK:
            task_rows = np.flatnonzero(rows & ~rejected)
            features, bad, bad_key = _features_json(batch.spans(task_rows.tolist()))
            for j in np.flatnonzero(bad):
                i = int(task_rows[j])
                rejections.append((i, Rejection(Reason.BAD_FEATURE, (
                    f"{FEATURE_PREFIX}{bad_key[j]} must be a finite number, a string or a "
                    "bool"))))
                rejected[i] = True
            features = features.filter(pa.array(~bad))
        keep = rows & ~rejected
        if keep.any():
            out.tables[TABLE_OF_SPAN[kind]].append(_to_table(kind, cols, day, features, keep))
    if rejections:
        rejections.sort(key=lambda r: r[0])
        rejections = _name_genai(rejections, cols, mapped)
        origins = batch.origin([i for i, _ in rejections])
        for (_, rej), (line, original) in zip(rejections, origins):
            out.reject(rej.reason, rej.message, source, line, original)


# ---------------------------------------------------------------- GenAI conventions
def _genai_kinds(cols: _Cols, missing: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spans named otherwise than the product's that carry ``gen_ai.operation.name``: the
    rows read as each product span kind (a model call as ``llm.call``, an agent invocation
    as ``agent.attempt``), and the rows of any other GenAI operation (counted as ignored)."""
    op = cols[GenAI.OPERATION_NAME]
    product = _np(pc.is_in(cols["name"].values, value_set=pa.array(list(SPAN_NAMES))))
    genai = ~op.null & ~product & ~missing
    if not genai.any():
        none = np.zeros(cols.n, bool)
        return {SPAN_CALL: none, SPAN_ATTEMPT: none}, none
    call = genai & _np(pc.is_in(op.values, value_set=pa.array(list(GENAI_CALL_OPERATIONS))))
    agent = genai & _np(pc.is_in(op.values, value_set=pa.array(list(GENAI_AGENT_OPERATIONS))))
    return {SPAN_CALL: call, SPAN_ATTEMPT: agent}, genai & ~call & ~agent


def _genai_fallbacks(cols: _Cols, genai_calls: np.ndarray) -> None:
    """Each product attribute that is absent (null, and not of a wrong type) takes the
    first GenAI key standing in for it that is present, wrong type included (so a bad
    GenAI value is judged as the product's would be). An absent ``autopilot.cache`` is
    ``prefix`` when cached input tokens were read, else ``miss``, on a span that reports
    GenAI cache reads or was read as a call through the conventions (``genai_calls``)."""
    reports_cache = genai_calls | (~cols[GenAI.CACHE_READ_INPUT_TOKENS].null
                                   | ~cols[GenAI.CACHE_READ_INPUT_TOKENS_OLD].null)
    cache = cols[Attr.CACHE]
    derive = reports_cache & cache.null & ~cache.wrong_type
    for key, stand_ins in GENAI_FALLBACKS.items():
        col = cols[key]
        for stand_in in stand_ins:
            take = col.null & ~col.wrong_type
            if not take.any():
                break
            other = cols[stand_in]
            use = take & (~other.null | other.wrong_type)
            if use.any():
                col = _Col(pc.if_else(pa.array(use), other.values, col.values),
                           np.where(use, other.wrong_type, col.wrong_type))
        cols.c[key] = col
    if derive.any():
        cached = _num(cols[Attr.CACHED_INPUT_TOKENS], 0)
        status = np.where(cached > 0, str(CacheStatus.PREFIX), str(CacheStatus.MISS))
        cols.c[Attr.CACHE] = _Col(pc.if_else(pa.array(derive), pa.array(status, pa.string()),
                                             cache.values), cache.wrong_type)


def _name_genai(rejections: list[tuple[int, Rejection]], cols: _Cols,
                mapped: dict[str, np.ndarray]) -> list[tuple[int, Rejection]]:
    """A rejected span that was read through the GenAI conventions says so."""
    out = []
    for i, rej in rejections:
        kind = next((k for k, rows in mapped.items() if rows[i]), None)
        if kind is not None:
            rej = Rejection(rej.reason, (
                f"{rej.message} (a GenAI {GenAI.OPERATION_NAME}="
                f"{cols[GenAI.OPERATION_NAME].values[i].as_py()!r} span read as {kind})"))
        out.append((i, rej))
    return out


def check_span(span: Mapping[str, Any], limits: SpanLimits | None = None,
               now_ns: int | None = None) -> Rejection | None:
    """Judge one flat span dict with the ingester's rules and bounds (None: it would be
    stored or ignored). The same rules the ingester applies to whole columns, on a batch of
    one; ``now_ns`` is the clock ``max_future_s`` counts from (default: now)."""
    bounds = Bounds(limits or SpanLimits(), time.time_ns() if now_ns is None else now_ns)
    if not isinstance(span, Mapping):
        return Rejection(Reason.INVALID_JSON, "a span must be a JSON object")
    shape = _shape_rejection(span, bounds.limits)
    if shape is None:
        with contextlib.suppress(TypeError, orjson.JSONEncodeError):  # not JSON's numbers
            size = len(orjson.dumps(span, default=str))
            if size > bounds.limits.max_line_bytes:
                shape = _too_large(size, bounds.limits.max_line_bytes, "max_line_bytes")
    if shape is not None:
        return shape
    if not isinstance(span.get("attributes", {}), (dict, type(None))):
        return Rejection(Reason.BAD_ATTRIBUTES, "attributes must be a JSON object")
    out = Normalised(bounds=bounds)
    _judge(_batch_from_records([span], [(1, span)]), "<check_span>", out)
    if out.quarantine:
        q = out.quarantine[0]
        return Rejection(Reason(q["reason"]), q["message"])
    return None


# -------------------------------------------------------------------- what a span carries
# A line needs no measuring when it cannot break a shape limit: its strings are no longer
# than the line, its nesting depth is at most its count of "[" and "{", and its attribute
# count at most its count of ":" (and at most (length + 1) / 5: '"":0' and a comma each).
_OTLP_KEY = b'"resourceSpans"'
_KEEP_BYTES = 4096  # of a line too large to keep whole in the quarantine


def _plain_length(limits: SpanLimits) -> int:
    return min(limits.max_string_chars, limits.max_line_bytes)


def _needs_measuring(raw: bytes, limits: SpanLimits) -> bool:
    return (len(raw) > _plain_length(limits)
            or raw.count(b"{") + raw.count(b"[") > limits.max_depth
            or raw.count(b":") > limits.max_attributes)


def _too_large(size: int, limit: int, name: str) -> Rejection:
    return Rejection(Reason.TOO_LARGE, f"{size:,} bytes is more than {name}={limit:,}")


def _too_deep(limits: SpanLimits) -> Rejection:
    return Rejection(Reason.TOO_DEEP, f"nested deeper than max_depth={limits.max_depth}")


def _shape_rejection(span: Mapping[str, Any], limits: SpanLimits) -> Rejection | None:
    """A span's attribute count, nesting depth and string lengths against the limits
    (iteratively: a deep value cannot exhaust the stack). The span object is depth 1."""
    attrs = span.get("attributes")
    if isinstance(attrs, (dict, list)) and len(attrs) > limits.max_attributes:
        return Rejection(Reason.TOO_MANY_ATTRIBUTES, (
            f"{len(attrs):,} attributes is more than max_attributes={limits.max_attributes}"))
    longest = limits.max_string_chars

    def long_string(what: str, length: int) -> Rejection:
        return Rejection(Reason.STRING_TOO_LONG, (
            f"{what} of {length:,} characters is longer than max_string_chars={longest:,}"))

    stack: list[tuple[Any, int]] = [(span, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limits.max_depth:
            return _too_deep(limits)
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > longest:
                return long_string("a key", len(key))
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
            elif isinstance(item, str) and len(item) > longest:
                return long_string("a string", len(item))
    return None


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (
                value.values() if isinstance(value, dict) else value))
    return False


def _kept(value: Any, limits: SpanLimits) -> Any:
    """What the quarantine keeps of an object: itself, or a bounded description of it."""
    if _depth_exceeds(value, limits.max_depth):
        return f"<not kept: nested deeper than max_depth={limits.max_depth}>"
    try:
        text = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return f"<not kept: {type(value).__name__}>"
    if len(text) > limits.max_line_bytes:
        return _kept_text(text, limits)
    return value


def _kept_text(raw: bytes, limits: SpanLimits) -> str:
    """A line as the quarantine keeps it: whole, or its first bytes when it is too large."""
    raw = raw.rstrip(b"\r\n")
    if len(raw) > limits.max_line_bytes:
        return raw[:_KEEP_BYTES].decode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Verdict:
    """What one line (or one document) is before its spans meet the rules."""

    kind: str  # "span" (a flat span), "otlp" (an export request) or "reject"
    value: Any = None  # the parsed object
    rejection: Rejection | None = None


_UNPARSED = object()


def _screen(raw: bytes, limits: SpanLimits, *, parsed: Any = _UNPARSED) -> _Verdict:
    """One line (or document): parse it once with orjson and measure what it carries."""
    size = len(raw.rstrip(b"\r\n"))
    maybe_otlp = _OTLP_KEY in raw
    if size > (max(limits.max_request_bytes, limits.max_line_bytes) if maybe_otlp
               else limits.max_line_bytes):
        name = "max_request_bytes" if maybe_otlp else "max_line_bytes"
        return _Verdict("reject", rejection=_too_large(size, getattr(limits, name), name))
    if parsed is _UNPARSED:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc) or "recursion" in str(exc).lower():
                return _Verdict("reject", rejection=_too_deep(limits))
            return _Verdict("reject", rejection=Rejection(Reason.INVALID_JSON,
                                                          f"not valid JSON: {exc}"))
    if isinstance(parsed, dict) and "resourceSpans" in parsed:
        return _Verdict("otlp", parsed)
    if not isinstance(parsed, dict):
        return _Verdict("reject", rejection=Rejection(Reason.INVALID_JSON,
                                                      "a line must hold one JSON object"))
    if size > limits.max_line_bytes:
        return _Verdict("reject", rejection=_too_large(size, limits.max_line_bytes,
                                                       "max_line_bytes"))
    if _needs_measuring(raw, limits):
        shape = _shape_rejection(parsed, limits)
        if shape is not None:
            return _Verdict("reject", rejection=shape)
    if not isinstance(parsed.get("attributes", {}), (dict, type(None))):
        return _Verdict("reject", rejection=Rejection(Reason.BAD_ATTRIBUTES,
                                                      "attributes must be a JSON object"))
    return _Verdict("span", parsed)


class _Collect:
    """Spans read one by one (flat lines, OTLP spans) waiting to be judged as one batch."""

    def __init__(self, source: str, out: Normalised):
        self.source, self.out = source, out
        self.records: list[Mapping[str, Any]] = []
        self.origins: list[tuple[int, Any]] = []

    def take(self, verdict: _Verdict, raw: bytes, line: int) -> None:
        limits = self.out.bounds.limits
        if verdict.kind == "reject":
            assert verdict.rejection is not None
            self.out.seen += 1
            self.out.reject(verdict.rejection.reason, verdict.rejection.message, self.source,
                            line, _kept_text(raw, limits))
        elif verdict.kind == "otlp":
            _otlp_request(verdict.value, raw, line, self)
        else:
            self.records.append(verdict.value)
            self.origins.append((line, _kept_text(raw, limits)))

    def judge(self) -> None:
        _judge(_batch_from_records(self.records, self.origins), self.source, self.out)
        self.records, self.origins = [], []


# --------------------------------------------------------------------- line-by-line path
def _batch_from_records(records: Sequence[Mapping[str, Any]],
                        origins: Sequence[tuple[int, Any]]) -> _RawBatch:
    """Columns from span dicts already known to be objects with an object of attributes."""
    n = len(records)
    top = {k: [r.get(k) for r in records] for k in _TOP_KINDS}
    attrs: dict[str, list[Any]] = {}
    for i, r in enumerate(records):
        for key, value in (r.get("attributes") or {}).items():
            if key in ATTRIBUTE_KINDS:
                attrs.setdefault(key, [None] * n)[i] = value
    return _RawBatch(n=n, top=top, attrs=attrs, from_arrow=False,
                     origin=lambda idx: [origins[i] for i in idx],
                     spans=lambda idx: [records[i] for i in idx])


def _judge_lines(lines: Sequence[bytes], first_line: int, source: str, out: Normalised,
                 skip: frozenset[int] | set[int] = frozenset()) -> None:
    """The slow path: each line parsed singly, so a bad line only costs itself. Lines in
    ``skip`` (absolute numbers) were judged before the chunk was parsed."""
    batch = _Collect(source, out)
    limits = out.bounds.limits
    for offset, raw in enumerate(lines):
        line_no = first_line + offset
        if line_no in skip or not raw.strip():
            continue
        batch.take(_screen(raw, limits), raw, line_no)
    batch.judge()


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")


# ----------------------------------------------------------------------- Arrow path
def _line_starts(chunk: bytes) -> np.ndarray:
    """Where each line of a chunk starts, and where the last one ends (len(chunk))."""
    nl = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
    starts = np.concatenate(([0], nl + 1)).astype(np.int64)
    if starts[-1] != len(chunk):
        starts = np.append(starts, len(chunk))
    return starts


def _arrow_batch(table: pa.Table, chunk: bytes, first_line: int,
                 starts: np.ndarray | None = None) -> _RawBatch:
    table = table.combine_chunks()
    top = {k: table.column(k).chunk(0) if table.column(k).num_chunks else pa.nulls(0)
           for k in _TOP_KINDS if k in table.column_names}
    attrs: dict[str, pa.Array] = {}
    if "attributes" in table.column_names and table.column("attributes").num_chunks:
        struct = table.column("attributes").chunk(0)
        if not pa.types.is_struct(struct.type):
            raise _NeedsLinePath("attributes is not an object")
        # flatten() folds the struct's own nulls (no attributes) into every field; Arrow
        # reads the known attributes only (the schema's), so nothing else is carried
        for f, values in zip(struct.type, struct.flatten()):
            if f.name in ATTRIBUTE_KINDS:
                attrs[f.name] = values
    line_starts: list[np.ndarray] = [] if starts is None else [starts]

    def raw_lines(rows: Sequence[int]) -> list[bytes]:
        # Arrow rows are the chunk's lines one to one (checked by the caller), so a line
        # is only located when its row is quarantined or its features are read.
        if not line_starts:
            line_starts.append(_line_starts(chunk))
        starts = line_starts[0]
        index = np.asarray(rows, np.int64)
        return [chunk[a:b] for a, b in zip(starts[index].tolist(), starts[index + 1].tolist())]

    def origin(rows: Sequence[int]) -> list[tuple[int, Any]]:
        return [(first_line + r, _text(raw)) for r, raw in zip(rows, raw_lines(rows))]

    def spans(rows: Sequence[int]) -> list[Any]:
        # the rows' lines as one JSON array: one call into orjson
        try:
            return orjson.loads(b"[" + b",".join(raw_lines(rows)) + b"]")
        except orjson.JSONDecodeError as exc:  # a line Arrow read and orjson refuses
            raise _NeedsLinePath(str(exc)) from None

    return _RawBatch(n=table.num_rows, top=top, attrs=attrs, from_arrow=True, origin=origin,
                     spans=spans)


# One block per chunk (block_size above the chunk size), so a row in Arrow's error message
# is a row of this chunk. Unknown fields (unknown attributes, features) are skipped, never
# inferred: inference crashed on a value nested a few thousand deep and took time
# quadratic in the number of distinct keys of a chunk.
_READ_OPTIONS = pa_json.ReadOptions(block_size=2 * CHUNK_BYTES + (1 << 20), use_threads=False)
_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=_FLAT_SCHEMA,
                                      unexpected_field_behavior="ignore")


def _line_count(chunk: bytes) -> int:
    return chunk.count(b"\n") + (0 if chunk.endswith(b"\n") or not chunk else 1)


def _parse(chunk: bytes) -> pa.Table | Exception:
    """Arrow's parse of a chunk, or the reason it refused."""
    try:
        return pa_json.read_json(pa.BufferReader(chunk), read_options=_READ_OPTIONS,
                                 parse_options=_PARSE_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return exc


@dataclass
class _Prepared:
    """A chunk made safe for Arrow, and parsed (run a chunk ahead, off-thread): the lines
    that might break a bound were measured, and those judged already (beyond a bound,
    not JSON, an OTLP request) replaced by ``{}``; ``judged`` holds their outcome."""

    chunk: bytes
    lines: int
    first_line: int
    skip: frozenset[int]
    judged: Normalised
    parsed: pa.Table | Exception | None
    starts: np.ndarray | None  # of the chunk's lines, when no line was replaced


def _scan(chunk: bytes, limits: SpanLimits) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's line starts (as ``_line_starts``) and the rows of the lines that might
    break a shape limit (see ``_needs_measuring``; a length counts the newline too, so at
    worst a line is measured needlessly) or hold an OTLP request. One pass finds the
    newlines and the "{" and "[" characters together."""
    data = np.frombuffer(chunk, np.uint8)
    mask = (data == 10) | (data == ord("{"))
    if b"[" in chunk:  # (memchr: far cheaper than one more comparison of every byte)
        mask |= data == ord("[")
    marks = np.flatnonzero(mask)
    newline = data[marks] == 10
    starts = np.concatenate(([0], marks[newline] + 1)).astype(np.int64)
    if starts[-1] != len(chunk):
        starts = np.append(starts, len(chunk))
    lengths = np.diff(starts)
    flagged = lengths > _plain_length(limits)
    opens = marks[~newline]
    flagged |= np.diff(np.searchsorted(opens, starts)) > limits.max_depth
    for r in np.flatnonzero(~flagged & (lengths > 5 * limits.max_attributes)).tolist():
        flagged[r] = chunk.count(b":", int(starts[r]), int(starts[r + 1])) > limits.max_attributes
    at = chunk.find(_OTLP_KEY) if b"S" in chunk else -1  # memchr first: "S" is rare
    while at >= 0:
        flagged[np.searchsorted(starts, at, side="right") - 1] = True
        at = chunk.find(_OTLP_KEY, at + len(_OTLP_KEY))
    return starts, np.flatnonzero(flagged)


def _prepare(chunk: bytes, lines: int, first_line: int, source: str,
             bounds: Bounds) -> _Prepared:
    judged = Normalised(bounds=bounds)
    starts: np.ndarray | None
    starts, flagged = _scan(chunk, bounds.limits)
    skip: set[int] = set()
    if len(flagged):
        batch = _Collect(source, judged)
        pieces: list[bytes] = []
        last = 0
        for r in flagged.tolist():
            a, b = int(starts[r]), int(starts[r + 1])
            raw = chunk[a:b]
            if not raw.strip():
                continue
            verdict = _screen(raw, bounds.limits)
            if verdict.kind == "span":
                continue  # measured and within every bound: Arrow may read it
            batch.take(verdict, raw, first_line + r)
            skip.add(first_line + r)
            pieces += [chunk[last:a], b"{}\n" if raw.endswith(b"\n") else b"{}"]
            last = b
        batch.judge()
        if skip:
            chunk = b"".join([*pieces, chunk[last:]])
            starts = None
    parsed = _parse(chunk) if lines > BISECT_LEAF_LINES else None
    return _Prepared(chunk, lines, first_line, frozenset(skip), judged, parsed, starts)


def _judge_chunk(chunk: bytes, lines: int, first_line: int, source: str, out: Normalised,
                 parsed: pa.Table | Exception | None = None,
                 skip: frozenset[int] = frozenset(), starts: np.ndarray | None = None) -> None:
    """Judge a chunk of whole lines parsed by Arrow. A chunk Arrow refuses is split around
    the row its error names (else in halves) and the pieces judged the same way. Lines in
    ``skip`` (absolute numbers) were judged already: they are ``{}`` here."""
    if lines <= BISECT_LEAF_LINES:
        _judge_lines(chunk.split(b"\n")[:lines], first_line, source, out, skip)
        return
    if parsed is None:
        parsed = _parse(chunk)
    try:
        if isinstance(parsed, Exception):
            raise _NeedsLinePath(str(parsed))
        # Arrow skips blank lines and accepts two objects on one line; either breaks the
        # row-to-line mapping, so such a chunk is split like a refused one.
        if parsed.num_rows != lines:
            raise _NeedsLinePath("rows do not match lines")
        partial = out.part()
        batch = _arrow_batch(parsed, chunk, first_line, starts)
        if skip:
            rows = np.arange(lines)
            batch = batch.take(rows[~np.isin(rows + first_line, list(skip))])
        _judge(batch, source, partial)
    except _NeedsLinePath as refusal:
        for piece, piece_lines, piece_first in _split(chunk, lines, first_line, str(refusal)):
            _judge_chunk(piece, piece_lines, piece_first, source, out, skip=skip)
        return
    _merge(out, partial)


def _split(chunk: bytes, lines: int, first_line: int, error: str
           ) -> list[tuple[bytes, int, int]]:
    """Pieces (bytes, lines, first line) of a refused chunk: before, at and after the row
    Arrow's error names when it names one (a hint only: rows skip blank lines), else two
    halves. Every piece is smaller than the chunk, so the recursion ends, and none is more
    than three quarters of it (the named row is only a hint), so it ends in log depth."""
    starts = np.concatenate(([0], np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + 1))
    match = _ROW_IN_ERROR.search(error)
    row = int(match.group(1)) if match else -1
    cuts = [row, row + 1] if 0 <= row < lines else [lines // 2]
    if max(cuts[0], lines - cuts[-1]) > (3 * lines) // 4:
        # A row near an edge would peel one line per level: Arrow names row 0 for a type
        # change it meets in a later row, and a chunk of thousands of lines then recursed
        # past Python's limit. Halving keeps the depth logarithmic.
        cuts = [lines // 2]
    bounds = [0, *cuts, lines]
    pieces = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            end = int(starts[b]) if b < len(starts) else len(chunk)
            pieces.append((chunk[int(starts[a]):end], b - a, first_line + a))
    return pieces


def _merge(into: Normalised, part: Normalised) -> None:
    for table, parts in part.tables.items():
        into.tables[table].extend(parts)
    into.quarantine.extend(part.quarantine)
    into.ignored_by.update(part.ignored_by)
    into.seen += part.seen


# -------------------------------------------------------------------------- file reading
def _open(path: Path):
    with path.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


class _Prefixed:
    """A binary stream read so far (``head``) followed by the rest of it (``fh``)."""

    def __init__(self, head: bytes, fh: Any):
        self.head, self.pos, self.fh = head, 0, fh

    def read(self, size: int) -> bytes:
        if self.pos >= len(self.head):
            return self.fh.read(size)
        out = self.head[self.pos:self.pos + size]
        self.pos += len(out)
        return out + self.fh.read(size - len(out)) if len(out) < size else out

    def readline(self, size: int) -> bytes:
        if self.pos >= len(self.head):
            return self.fh.readline(size)
        end = self.head.find(b"\n", self.pos, self.pos + size)
        stop = end + 1 if end >= 0 else min(len(self.head), self.pos + size)
        out = self.head[self.pos:stop]
        self.pos = stop
        if end < 0 and len(out) < size:
            out += self.fh.readline(size - len(out))
        return out


def _chunks(stream: Any, size: int, line_cap: int) -> Iterator[bytes]:
    """Blocks of whole lines (the last may lack its newline). A line longer than
    ``line_cap`` keeps its first ``line_cap + 1`` bytes (enough to be judged too large);
    the rest of it is read and dropped, so no single line is ever held whole."""
    while True:
        block = stream.read(size)
        if not block:
            return
        if not block.endswith(b"\n"):
            partial = len(block) - (block.rfind(b"\n") + 1)  # of the last line, read so far
            room = line_cap + 1 - partial
            rest = stream.readline(room) if room > 0 else b""
            block += rest
            if not block.endswith(b"\n") and (room <= 0 or len(rest) == room):
                while True:  # beyond the cap: drop the remainder of the line
                    dropped = stream.readline(1 << 20)
                    if not dropped or dropped.endswith(b"\n"):
                        break
                block += b"\n"
        yield block


def _maybe_document(head: bytes, whole: bool) -> bool:
    """Whether a file may be one pretty-printed JSON document rather than JSON lines: it
    starts with "{", its first line is not a JSON value (nor one too deep to read), and no
    other line in the head is a span or an export request (a flat file with a broken
    first line has those). ``whole``: the head is the whole file."""
    stripped = head.lstrip()
    if not stripped.startswith(b"{") or b"\n" not in stripped.rstrip():
        return False  # one line, or a first line longer than the head: JSON lines
    lines = stripped.split(b"\n")
    try:
        orjson.loads(lines[0])
        return False
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            return False
    for line in lines[1:] if whole else lines[1:-1]:  # the head may cut the last one
        line = line.strip()
        if line.startswith(b"{") and line.endswith(b"}"):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict) and (
                    "resourceSpans" in value or "span_id" in value or "trace_id" in value):
                return False
    return True


def read_span_file(path: Path, out: Normalised) -> None:
    """Judge every span of one file into ``out``: gzip from the file's first bytes; each
    line is a flat span or an OTLP export request (or the whole file one pretty-printed
    document)."""
    source = str(path)
    limits = out.bounds.limits
    with _open(path) as fh:
        head = fh.read(1 << 16)
        if _maybe_document(head, whole=len(head) < 1 << 16):
            data = head + fh.read(max(limits.max_request_bytes + 1 - len(head), 0))
            verdict = _document(data, limits)
            if verdict is not None:
                batch = _Collect(source, out)
                batch.take(verdict, data, 1)
                batch.judge()
                return
            head = data  # not one document: JSON lines whose first line is broken
        _read_lines(_Prefixed(head, fh), source, out)


def _document(data: bytes, limits: SpanLimits) -> _Verdict | None:
    """The verdict on a file read whole as one JSON document, or None when it is not one
    (too large to be one, or not a single JSON value: then its lines are judged one by one,
    so no good line is lost to a document that does not parse)."""
    if len(data) > limits.max_request_bytes:
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return _screen(data, limits, parsed=document)


def _read_lines(stream: Any, source: str, out: Normalised) -> None:
    # Each chunk is measured and parsed by Arrow on a worker thread (the GIL released)
    # while this thread judges the oldest one, so every core stays busy.
    limits = out.bounds.limits
    line_cap = max(limits.max_line_bytes, limits.max_request_bytes)
    workers = max(1, pa.cpu_count())
    pending: deque[tuple[bytes, int, int, Future | None]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="span-parse") as pool:
        line = 1
        for chunk in _chunks(stream, CHUNK_BYTES, line_cap):
            lines = _line_count(chunk)
            future = pool.submit(_prepare, chunk, lines, line, source, out.bounds) \
                if lines > BISECT_LEAF_LINES else None
            pending.append((chunk, lines, line, future))
            line += lines
            while len(pending) > workers:
                _judge_pending(pending.popleft(), source, out)
        while pending:
            _judge_pending(pending.popleft(), source, out)


def _judge_pending(pending: tuple[bytes, int, int, Future | None], source: str,
                   out: Normalised) -> None:
    chunk, lines, first_line, future = pending
    if future is None:
        _judge_chunk(chunk, lines, first_line, source, out)
        return
    prepared: _Prepared = future.result()
    _merge(out, prepared.judged)
    _judge_chunk(prepared.chunk, lines, first_line, source, out, prepared.parsed,
                 prepared.skip, prepared.starts)


# --------------------------------------------------------------------------------- OTLP
class OtlpShapeError(ValueError):
    """An OTLP/JSON document or span that does not have OTLP's structure."""


_INT64_TEXT = re.compile(r"-?[0-9]{1,19}")  # proto3 JSON writes int64 as text


def _otlp_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain value; int64 arrive as strings in proto3 JSON."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        v = value["intValue"]
        if isinstance(v, str) and _INT64_TEXT.fullmatch(v):
            return int(v)
        return v if isinstance(v, int) else {"intValue": v}
    if "doubleValue" in value:
        v = value["doubleValue"]
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                return float(v)  # "NaN", "Infinity" in proto3 JSON
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else value
    if "boolValue" in value:
        return value["boolValue"]
    return value  # arrayValue, kvlistValue, bytesValue: not a scalar any rule accepts


def _otlp_int(value: Any) -> Any:
    if isinstance(value, str) and _INT64_TEXT.fullmatch(value) and not value.startswith("-"):
        return int(value)
    return value


def otlp_span_to_flat(span: Mapping[str, Any]) -> dict[str, Any]:
    """One OTLP/JSON span as the flat form. Raises OtlpShapeError when it is not shaped as one."""
    raw_attrs = span.get("attributes") or []
    if not isinstance(raw_attrs, list):
        raise OtlpShapeError("attributes must be a list of {key, value}")
    attributes: dict[str, Any] = {}
    for kv in raw_attrs:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise OtlpShapeError("each attribute must be an object with a string key")
        attributes[kv["key"]] = _otlp_value(kv.get("value"))
    return {
        "name": span.get("name"),
        "trace_id": span.get("traceId"),
        "span_id": span.get("spanId"),
        "parent_span_id": span.get("parentSpanId") or None,
        "start_time_unix_nano": _otlp_int(span.get("startTimeUnixNano")),
        "end_time_unix_nano": _otlp_int(span.get("endTimeUnixNano")),
        "attributes": attributes,
    }


def _otlp_request(request: dict[str, Any], raw: bytes, line: int, batch: _Collect) -> None:
    """The spans of one export request into ``batch``. Each malformed part (a resource
    entry, a scope, a span) is quarantined alone, so the good spans beside it are kept; a
    request that holds no span at all is counted as ignored."""
    out, limits = batch.out, batch.out.bounds.limits
    units = 0

    def bad(message: str, original: Any, reason: Reason = Reason.BAD_OTLP) -> None:
        nonlocal units
        units += 1
        out.seen += 1
        out.reject(reason, message, batch.source, line, original)

    resources = request.get("resourceSpans")
    if not isinstance(resources, list):
        bad("not an OTLP export request: resourceSpans must be a list", _kept_text(raw, limits))
        return
    # A span can only be larger than max_line_bytes when its request is.
    measure_size = len(raw) > limits.max_line_bytes
    for resource in resources:
        if not isinstance(resource, dict):
            bad("each resourceSpans entry must be an object", _kept(resource, limits))
            continue
        scopes = resource.get("scopeSpans", resource.get("instrumentationLibrarySpans", []))
        if not isinstance(scopes, list):
            bad("scopeSpans must be a list", _kept(resource, limits))
            continue
        for scope in scopes:
            spans = scope.get("spans", []) if isinstance(scope, dict) else None
            if not isinstance(spans, list):
                bad("each scopeSpans entry must be an object with a list of spans",
                    _kept(scope, limits))
                continue
            for span in spans:
                units += 1
                rejection = _otlp_span_rejection(span, limits, measure_size)
                if rejection is not None:
                    out.seen += 1
                    out.reject(rejection.reason, rejection.message, batch.source, line,
                               _kept(span, limits))
                    continue
                try:
                    flat = otlp_span_to_flat(span)
                except OtlpShapeError as exc:
                    out.seen += 1
                    out.reject(Reason.BAD_OTLP, str(exc), batch.source, line, span)
                    continue
                batch.records.append(flat)
                batch.origins.append((line, span))
    if units == 0:
        out.seen += 1
        out.ignore(Ignored.EMPTY_OTLP_REQUEST)


def read_otlp_request(request: Mapping[str, Any], raw: bytes, source: str, out: Normalised,
                      line: int = 1) -> None:
    """Judge one OTLP/JSON export request already parsed (``request``; ``raw`` is its
    JSON text) into ``out``, as a line of a span file holding it is judged: the OTLP/HTTP
    receiver reads a request body this way, so its verdicts are the ingester's."""
    batch = _Collect(source, out)
    batch.take(_screen(raw, out.bounds.limits, parsed=request), raw, line)
    batch.judge()


def _otlp_span_rejection(span: Any, limits: SpanLimits, measure_size: bool
                         ) -> Rejection | None:
    if not isinstance(span, dict):
        return Rejection(Reason.BAD_OTLP, "a span must be an object")
    shape = _shape_rejection(span, limits)
    if shape is not None:
        return shape
    if measure_size:
        size = len(orjson.dumps(span))
        if size > limits.max_line_bytes:
            return _too_large(size, limits.max_line_bytes, "max_line_bytes")
    return None
