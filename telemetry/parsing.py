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
``check_span`` applies the same rules to one span dict.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
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
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_NAMES,
    SPAN_TASK,
    Attr,
    CacheStatus,
    Outcome,
    Purpose,
)
from contracts.tables import TABLES
from telemetry.warehouse import arrow_schema

__all__ = [
    "BISECT_LEAF_LINES",
    "CHUNK_BYTES",
    "Normalised",
    "OtlpShapeError",
    "Reason",
    "Rejection",
    "check_span",
    "coerce_feature",
    "otlp_span_to_flat",
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


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    message: str


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
    attrs: dict[str, Any]  # attribute key -> same
    features: dict[str, Any]  # feature name (prefix removed) -> same
    from_arrow: bool
    # row indices -> [(line number, original line text or object)] for the quarantine
    origin: Callable[[Sequence[int]], list[tuple[int, Any]]]

    def col(self, key: str, kind: str, *, top: bool = False) -> _Col:
        source = self.top if top else self.attrs
        values = source.get(key)
        if values is None:
            return _Col(pa.nulls(self.n, _KIND_ARROW[kind]), np.zeros(self.n, bool))
        if self.from_arrow:
            return _col_from_arrow(values, kind)
        return _col_from_values(values, kind)

    def take(self, rows: np.ndarray) -> _RawBatch:
        def pick(values: Any) -> Any:
            if self.from_arrow:
                return values.take(pa.array(rows, pa.int64()))
            return [values[i] for i in rows]

        outer_origin = self.origin
        return _RawBatch(
            n=len(rows),
            top={k: pick(v) for k, v in self.top.items()},
            attrs={k: pick(v) for k, v in self.attrs.items()},
            features={k: pick(v) for k, v in self.features.items()},
            from_arrow=self.from_arrow,
            origin=lambda idx: outer_origin([int(rows[i]) for i in idx]),
        )


# ------------------------------------------------------------------------------ rules
class _Cols:
    """The coerced fields of one span kind over a batch, as the rules read them."""

    def __init__(self, batch: _RawBatch, keys: Iterable[str]):
        self.n = batch.n
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
    Rule(Reason.MISSING_TASK_ID, rule_missing_task_id, lambda c, i: (
        f"{Attr.TASK_ID} must be a non-empty string (got {c.show(Attr.TASK_ID, i)})")),
]


def _cost_msg(key: str) -> Callable[[_Cols, int], str]:
    return lambda c, i: f"{key} must be a finite number >= 0 (got {c.show(key, i)})"


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
        Rule(Reason.UNKNOWN_CACHE_STATUS, rule_unknown_cache_status,
             _enum_msg(Attr.CACHE, CacheStatus)),
        Rule(Reason.BAD_COST, _cost_rule(Attr.COST_USD), _cost_msg(Attr.COST_USD)),
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
_EASY_STRING = r'^[^\x00-\x1f"\\]*$'  # needs no JSON escaping


def _feature_fragments(name: str, values: Any, from_arrow: bool
                       ) -> tuple[pa.Array, np.ndarray]:
    """``"name":value`` per row (null where the row has no such feature) and the mask of
    rows whose value is not a finite number, a string or a bool."""
    key = orjson.dumps(name).decode() + ":"
    n = len(values)
    if from_arrow:
        t = values.type
        if pa.types.is_integer(t):
            return pc.binary_join_element_wise(key, values.cast(pa.string()), ""), np.zeros(n, bool)
        if pa.types.is_boolean(t):
            text = pc.if_else(values, "true", "false")
            return pc.binary_join_element_wise(key, text, ""), np.zeros(n, bool)
        if pa.types.is_string(t) and pc.all(pc.match_substring_regex(
                values, _EASY_STRING)).as_py() is not False:
            return pc.binary_join_element_wise(key + '"', values, '"', ""), np.zeros(n, bool)
        if not (pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_null(t)):
            # an object or array feature: every value present is bad
            return pa.nulls(n, pa.string()), ~_np(values.is_null())
        values = values.to_pylist()
    bad = np.zeros(n, bool)
    out: list[str | None] = []
    for i, v in enumerate(values):
        c = BAD if v is None else coerce_feature(v)
        if c is BAD:
            bad[i] = v is not None
            out.append(None)
        else:
            out.append(key + orjson.dumps(c).decode())
    return pa.array(out, pa.string()), bad


def _features_json(features: Mapping[str, Any], n: int, from_arrow: bool
                   ) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Each row's features as a JSON object string (keys sorted, as ``orjson`` with sorted
    keys writes it), the mask of rows with a bad feature, and the offending key per row."""
    bad = np.zeros(n, bool)
    bad_key = [""] * n
    if not features:
        return pa.array(["{}"] * n, pa.string()), bad, bad_key
    fragments = []
    for name in sorted(features):
        text, bad_here = _feature_fragments(name, features[name], from_arrow)
        for i in np.flatnonzero(bad_here & ~bad):
            bad_key[i] = name
        bad |= bad_here
        fragments.append(text)
    joined = pc.binary_join_element_wise(*fragments, ",", null_handling="skip")
    return pc.binary_join_element_wise("{", joined, "}", ""), bad, bad_key


# ----------------------------------------------------------------------- normalising
@dataclass
class Normalised:
    """The outcome of judging raw batches."""

    tables: dict[str, list[pa.Table]] = field(default_factory=lambda: {t: [] for t in TABLES})
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    seen: int = 0

    def reject(self, reason: Reason, message: str, source: str, line: int, original: Any):
        self.quarantine.append({"reason": str(reason), "message": message, "source": source,
                                "line": line, "original": original})


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
    cols = _Cols(batch, _ALL_KEYS)
    name = cols["name"]
    missing = name.null | _np(pc.equal(name.values, ""))
    rejections: list[tuple[int, Rejection]] = [
        (int(i), Rejection(Reason.MISSING_NAME, "span has no name (or one that is not a string)"))
        for i in np.flatnonzero(missing)]
    kind_rows = {kind: _np(pc.equal(name.values, kind)) for kind in SPAN_NAMES}
    known = np.logical_or.reduce(list(kind_rows.values()))
    out.ignored += int((~known & ~missing).sum())
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
            features, bad, bad_key = _features_json(
                batch.take(task_rows).features, len(task_rows), batch.from_arrow)
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
        origins = batch.origin([i for i, _ in rejections])
        for (_, rej), (line, original) in zip(rejections, origins):
            out.reject(rej.reason, rej.message, source, line, original)


def check_span(span: Mapping[str, Any]) -> Rejection | None:
    """Judge one flat span dict with the ingester's rules (None: it would be stored or
    ignored). The same rules the ingester applies to whole columns, on a batch of one."""
    out = Normalised()
    batch = _batch_from_records([span], [(1, span)])
    _judge(batch, "<check_span>", out)
    if out.quarantine:
        q = out.quarantine[0]
        return Rejection(Reason(q["reason"]), q["message"])
    return None


# --------------------------------------------------------------------- line-by-line path
def _batch_from_records(records: Sequence[Mapping[str, Any]],
                        origins: Sequence[tuple[int, Any]]) -> _RawBatch:
    """Columns from span dicts already known to be objects with an object of attributes."""
    n = len(records)
    top = {k: [r.get(k) for r in records] for k in _TOP_KINDS}
    attrs: dict[str, list[Any]] = {}
    features: dict[str, list[Any]] = {}
    for i, r in enumerate(records):
        for key, value in (r.get("attributes") or {}).items():
            if key.startswith(FEATURE_PREFIX):
                features.setdefault(key[len(FEATURE_PREFIX):], [None] * n)[i] = value
            elif key in ATTRIBUTE_KINDS:
                attrs.setdefault(key, [None] * n)[i] = value
    return _RawBatch(n=n, top=top, attrs=attrs, features=features, from_arrow=False,
                     origin=lambda idx: [origins[i] for i in idx])


def _judge_lines(lines: list[bytes], first_line: int, source: str, out: Normalised) -> None:
    """The slow path: each line parsed singly, so a bad line only costs itself."""
    records: list[dict[str, Any]] = []
    origins: list[tuple[int, Any]] = []
    for offset, raw in enumerate(lines):
        line_no = first_line + offset
        if not raw.strip():
            continue
        try:
            span = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            out.seen += 1
            out.reject(Reason.INVALID_JSON, f"not valid JSON: {exc}", source, line_no,
                       _text(raw))
            continue
        if not isinstance(span, dict):
            out.seen += 1
            out.reject(Reason.INVALID_JSON, "a line must hold one JSON object",
                       source, line_no, span)
            continue
        if not isinstance(span.get("attributes", {}), (dict, type(None))):
            out.seen += 1
            out.reject(Reason.BAD_ATTRIBUTES, "attributes must be a JSON object",
                       source, line_no, span)
            continue
        records.append(span)
        origins.append((line_no, _text(raw)))
    _judge(_batch_from_records(records, origins), source, out)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")


# ----------------------------------------------------------------------- Arrow path
def _arrow_batch(table: pa.Table, chunk: bytes, first_line: int) -> _RawBatch:
    table = table.combine_chunks()
    top = {k: table.column(k).chunk(0) if table.column(k).num_chunks else pa.nulls(0)
           for k in _TOP_KINDS if k in table.column_names}
    attrs: dict[str, pa.Array] = {}
    features: dict[str, pa.Array] = {}
    if "attributes" in table.column_names and table.column("attributes").num_chunks:
        struct = table.column("attributes").chunk(0)
        if not pa.types.is_struct(struct.type):
            raise _NeedsLinePath("attributes is not an object")
        # flatten() folds the struct's own nulls (no attributes) into every field
        for f, values in zip(struct.type, struct.flatten()):
            if f.name.startswith(FEATURE_PREFIX):
                features[f.name[len(FEATURE_PREFIX):]] = values
            else:
                attrs[f.name] = values
    line_starts: list[np.ndarray] = []

    def origin(rows: Sequence[int]) -> list[tuple[int, Any]]:
        # Arrow rows are the chunk's lines one to one (checked by the caller), so the
        # original text is only located when a row is quarantined.
        if not line_starts:
            nl = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
            line_starts.append(np.concatenate(([0], nl + 1)))
        starts = line_starts[0]
        result = []
        for r in rows:
            a = int(starts[r])
            b = int(starts[r + 1]) if r + 1 < len(starts) else len(chunk)
            result.append((first_line + r, _text(chunk[a:b])))
        return result

    return _RawBatch(n=table.num_rows, top=top, attrs=attrs, features=features,
                     from_arrow=True, origin=origin)


# One block per chunk (block_size above the chunk size), so a row in Arrow's error message
# is a row of this chunk.
_READ_OPTIONS = pa_json.ReadOptions(block_size=2 * CHUNK_BYTES + (1 << 20), use_threads=False)
_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=_FLAT_SCHEMA,
                                      unexpected_field_behavior="infer")


def _line_count(chunk: bytes) -> int:
    return chunk.count(b"\n") + (0 if chunk.endswith(b"\n") or not chunk else 1)


def _parse(chunk: bytes) -> pa.Table | Exception:
    """Arrow's parse of a chunk, or the reason it refused (run a chunk ahead, off-thread)."""
    try:
        return pa_json.read_json(pa.BufferReader(chunk), read_options=_READ_OPTIONS,
                                 parse_options=_PARSE_OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return exc


def _judge_chunk(chunk: bytes, lines: int, first_line: int, source: str, out: Normalised,
                 parsed: pa.Table | Exception | None = None) -> None:
    """Judge a chunk of whole lines parsed by Arrow. A chunk Arrow refuses is split around
    the row its error names (else in halves) and the pieces judged the same way."""
    if lines <= BISECT_LEAF_LINES:
        _judge_lines(chunk.split(b"\n")[:lines], first_line, source, out)
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
        partial = Normalised()
        _judge(_arrow_batch(parsed, chunk, first_line), source, partial)
    except _NeedsLinePath as refusal:
        for piece, piece_lines, piece_first in _split(chunk, lines, first_line, str(refusal)):
            _judge_chunk(piece, piece_lines, piece_first, source, out)
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
    into.ignored += part.ignored
    into.seen += part.seen


# -------------------------------------------------------------------------- file reading
def _open(path: Path):
    with path.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def _chunks(fh, head: bytes = b"", size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Blocks of whole lines (the last may lack its newline); ``head`` comes first."""
    while True:
        block = fh.read(size - len(head))
        if head:
            block, head = head + block, b""
        if not block:
            return
        if not block.endswith(b"\n"):
            block += fh.readline()  # complete the last line
        yield block


def _sniff(head: bytes) -> str:
    """'otlp' when the first JSON value is an OTLP export request, else 'flat'."""
    stripped = head.lstrip()
    first_line = stripped.split(b"\n", 1)[0]
    try:
        obj = orjson.loads(first_line)
        return "otlp" if isinstance(obj, dict) and "resourceSpans" in obj else "flat"
    except orjson.JSONDecodeError:
        # a pretty-printed object spans lines; look for its key near the top
        return "otlp" if stripped.startswith(b"{") and b'"resourceSpans"' in head else "flat"


def read_span_file(path: Path, out: Normalised) -> None:
    """Judge every span of one file into ``out``: gzip and the format (flat JSON lines or
    OTLP/JSON) are detected from the file's first bytes."""
    source = str(path)
    with _open(path) as fh:
        head = fh.read(1 << 16)
        if _sniff(head) == "otlp":
            _read_otlp(head + fh.read(), source, out)
            return
        # Arrow parses the next chunks on worker threads (the GIL released) while this
        # thread judges the oldest one, so every core stays busy.
        workers = max(1, pa.cpu_count())
        pending: deque[tuple[bytes, int, int, Future | None]] = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="span-parse") as pool:
            line = 1
            for chunk in _chunks(fh, head):
                lines = _line_count(chunk)
                future = pool.submit(_parse, chunk) if lines > BISECT_LEAF_LINES else None
                pending.append((chunk, lines, line, future))
                line += lines
                while len(pending) > workers:
                    _judge_pending(pending.popleft(), source, out)
            while pending:
                _judge_pending(pending.popleft(), source, out)


def _judge_pending(pending: tuple[bytes, int, int, Future | None], source: str,
                   out: Normalised) -> None:
    chunk, lines, first_line, future = pending
    _judge_chunk(chunk, lines, first_line, source, out,
                 future.result() if future is not None else None)


# --------------------------------------------------------------------------------- OTLP
class OtlpShapeError(ValueError):
    """An OTLP/JSON document or span that does not have OTLP's structure."""


def _otlp_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain value; int64 arrive as strings in proto3 JSON."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        v = value["intValue"]
        if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
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
    if isinstance(value, str) and re.fullmatch(r"\d+", value):
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


def _otlp_spans(request: Any) -> Iterator[Any]:
    """Every span object of an export request; OtlpShapeError when the nesting is not OTLP's."""
    if not isinstance(request, dict) or not isinstance(request.get("resourceSpans", []), list):
        raise OtlpShapeError("resourceSpans must be a list")
    for resource_spans in request.get("resourceSpans", []):
        if not isinstance(resource_spans, dict):
            raise OtlpShapeError("each resourceSpans entry must be an object")
        scopes = resource_spans.get("scopeSpans", resource_spans.get(
            "instrumentationLibrarySpans", []))
        if not isinstance(scopes, list):
            raise OtlpShapeError("scopeSpans must be a list")
        for scope in scopes:
            spans = scope.get("spans", []) if isinstance(scope, dict) else None
            if not isinstance(spans, list):
                raise OtlpShapeError("spans must be a list")
            yield from spans


def _read_otlp(data: bytes, source: str, out: Normalised) -> None:
    try:
        documents = [(1, orjson.loads(data))]
    except orjson.JSONDecodeError:
        documents = None
    records: list[dict[str, Any]] = []
    origins: list[tuple[int, Any]] = []
    if documents is None:  # the file exporter's form: one request a line
        documents = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                documents.append((number, orjson.loads(raw)))
            except orjson.JSONDecodeError as exc:
                out.seen += 1
                out.reject(Reason.INVALID_JSON, f"not valid JSON: {exc}", source, number,
                           _text(raw))
    for number, request in documents:
        try:
            spans = list(_otlp_spans(request))
        except OtlpShapeError as exc:
            out.seen += 1
            out.reject(Reason.BAD_OTLP, f"not an OTLP export request: {exc}", source, number,
                       request)
            continue
        for span in spans:
            try:
                if not isinstance(span, dict):
                    raise OtlpShapeError("a span must be an object")
                records.append(otlp_span_to_flat(span))
                origins.append((number, span))
            except OtlpShapeError as exc:
                out.seen += 1
                out.reject(Reason.BAD_OTLP, str(exc), source, number, span)
    _judge(_batch_from_records(records, origins), source, out)
