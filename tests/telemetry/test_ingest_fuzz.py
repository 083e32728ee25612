"""Property-based fuzzing of ingest (issue 14, the standing suite).

Generated span files mix good spans with malformed lines and hostile values (deep
nesting, many attributes, long strings, implausible numbers, bytes that are not UTF-8,
OTLP requests with broken parts, flat lines that mention ``resourceSpans``), in the flat
JSON-lines form and in OTLP/JSON (one request a line, or one pretty-printed document),
small (line-by-line path) and large (Arrow's path). For every file:

- no exception escapes ingest (it refuses nothing here: bad input is counted);
- every good span is stored, and nothing else is (good spans are never lost);
- the count identity holds: what was read = stored + duplicates + ignored + quarantined,
  and what was read is exactly the file's units (its non-blank lines for a flat file;
  spans and malformed parts for OTLP);
- ingesting the same file again stores nothing and accounts for everything again.

Settings keep it fast and stable in CI: bounded examples, no deadline, derandomized, no
example database written into the working tree.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telemetry_testkit import (
    T0,
    attempt_span,
    call_span,
    frames,
    quarantined,
    task_span,
    to_otlp,
)

from contracts.spans import FEATURE_PREFIX, Attr
from telemetry.ingest import ingest_paths
from telemetry.parsing import BISECT_LEAF_LINES

# L5_FUZZ_EXAMPLES raises the bound for a longer run by hand (the figures in BENCHMARKS.md).
FUZZ = settings(max_examples=int(os.environ.get("L5_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NS = 10**9
BUILDERS = {"task": task_span, "attempt": attempt_span, "call": call_span}


# --------------------------------------------------------------------- hostile values
def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _hostile_line(kind: str, n: int, flavour: int, size: int) -> bytes:
    """A span that must never be stored (each flavour breaks one rule or one bound)."""
    span = BUILDERS[kind](n)
    attrs = span["attributes"]
    flavour %= 16
    if flavour == 0:  # beyond max_depth, up to a few thousand deep (too deep to encode)
        attrs["x.deep"] = "@deep@"
        depth = 33 + size
        return json.dumps(span).replace('"@deep@"', "[" * depth + "]" * depth).encode()
    if flavour == 1:
        attrs.update({f"x.{i}": i for i in range(129 + size % 200)})  # max_attributes
    elif flavour == 2:
        attrs[Attr.TASK_ID] = "t" * (65_537 + size)  # max_string_chars
    elif flavour == 3:
        attrs[Attr.COST_USD if kind != "task" else Attr.VERIFIER_COST_USD] = 1e308
    elif flavour == 4:
        span.update(start_time_unix_nano=7_258_118_400 * NS + size,  # the year 2200
                    end_time_unix_nano=7_258_118_400 * NS + size + 5)
    elif flavour == 5:
        span["span_id"] = "z" * 16
    elif flavour == 6:
        span["trace_id"] = None
    elif flavour == 7:
        span["end_time_unix_nano"] = span["start_time_unix_nano"] - 1 - size
    elif flavour == 8:
        attrs[Attr.TASK_ID] = {"nested": [size]}
    elif flavour == 9:
        span["attributes"] = ["not", "an", "object", size]
    elif flavour == 10:
        span["name"] = None
    elif flavour == 11:
        span["start_time_unix_nano"] = 1_262_304_000 * NS  # 2010: before earliest_start
        span["end_time_unix_nano"] = span["start_time_unix_nano"] + 1
    elif flavour == 12:
        attrs["resourceSpans"] = "mentioned"  # flat, and still bad: no span id
        del span["span_id"]
    elif flavour == 13:
        span["end_time_unix_nano"] = span["start_time_unix_nano"] + 30 * 86_400 * NS
    elif flavour == 14:
        attrs["x.blob"] = "b" * 60_000
        attrs.update({f"x.blob{i}": "b" * 60_000 for i in range(18)})  # > max_line_bytes
    else:
        attrs[FEATURE_PREFIX + "bad"] = [size]
        span["name"] = "agent.task"
    return json.dumps(span, allow_nan=False).encode()


text_line = st.text(st.characters(blacklist_characters="\n"), max_size=120)
bytes_line = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b" "))

# what one line of a flat file is: (kind of line, parameters)
line_plan = st.one_of(
    st.tuples(st.just("good"), st.sampled_from(sorted(BUILDERS))),
    st.tuples(st.just("again"), st.integers(0, 10_000)),  # a good span re-sent
    st.tuples(st.just("hostile"), st.tuples(st.sampled_from(sorted(BUILDERS)),
                                            st.integers(0, 15), st.integers(0, 3000))),
    st.tuples(st.just("text"), text_line),
    st.tuples(st.just("bytes"), bytes_line),
    st.tuples(st.just("cut"), st.integers(1, 200)),  # a good span cut short
    st.tuples(st.just("json"), st.one_of(st.integers(), st.lists(st.integers(), max_size=3),
                                         st.text(max_size=20), st.none())),
    st.tuples(st.just("blank"), st.sampled_from(["", "   ", "\t", "\r"])),
    st.tuples(st.just("otlp"), st.integers(0, 4)),  # an export request among flat lines
)


class _File:
    """A generated file: its lines, and what ingest must make of them."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.good: dict[str, set[str]] = {"tasks": set(), "attempts": set(), "calls": set()}
        self.good_lines: list[bytes] = []
        self.units = 0  # spans and unreadable lines or parts
        self.n = 0

    def next_n(self) -> int:
        self.n += 1
        return self.n

    def add_good(self, span: dict[str, Any]) -> None:
        table = {"agent.task": "tasks", "agent.attempt": "attempts", "llm.call": "calls"}
        self.good[table[span["name"]]].add(span["span_id"])

    def line(self, raw: bytes, units: int) -> None:
        self.lines.append(raw)
        self.units += units if raw.strip() else 0


def _flat_file(plans: list[tuple[str, Any]], pad: int) -> _File:
    f = _File()
    padding = [BUILDERS[("task", "attempt", "call")[i % 3]](f.next_n()) for i in range(pad)]
    for span in padding[: pad // 2]:
        f.add_good(span)
        f.line(orjson.dumps(span), 1)
    for kind, value in plans:
        if kind == "good":
            span = BUILDERS[value](f.next_n())
            f.add_good(span)
            raw = orjson.dumps(span)
            f.good_lines.append(raw)
            f.line(raw, 1)
        elif kind == "again" and f.good_lines:
            f.line(f.good_lines[value % len(f.good_lines)], 1)
        elif kind == "hostile":
            builder, flavour, size = value
            f.line(_hostile_line(builder, 10**6 + f.next_n(), flavour, size), 1)
        elif kind == "text":
            raw = value.encode("utf-8", "surrogatepass")
            f.line(raw, 1)
        elif kind == "bytes":
            f.line(value, 1)
        elif kind == "cut":
            f.line(orjson.dumps(call_span(10**6 + f.next_n()))[:value], 1)
        elif kind == "json":
            f.line(json.dumps(value).encode(), 1)
        elif kind == "blank":
            f.line(value.encode(), 0)
        elif kind == "otlp":
            spans = [BUILDERS[("call", "attempt", "task")[i % 3]](f.next_n())
                     for i in range(value)]
            for span in spans:
                f.add_good(span)
            f.line(orjson.dumps(to_otlp(spans)), max(len(spans), 1))  # empty: ignored
    for span in padding[pad // 2:]:
        f.add_good(span)
        f.line(orjson.dumps(span), 1)
    return f


def _check(src: Path, root: Path, f: _File, *, exact_units: bool = True) -> None:
    report = ingest_paths([src], root)
    assert report.files_failed == {}
    assert report.balanced, report.as_dict()
    if exact_units:
        assert report.spans_seen == f.units, report.as_dict()
    stored = {t: set(df["span_id"]) for t, df in frames(root).items()}
    assert stored == f.good  # every good span stored, nothing else
    assert report.quarantined_total == len(quarantined(root))
    assert all(r["reason"] and r["message"] for r in quarantined(root))
    again = ingest_paths([src], root)
    assert again.stored_total == 0 and again.balanced
    assert again.spans_seen == report.spans_seen
    assert again.duplicates_total == report.stored_total + report.duplicates_total


def _is_request(raw: bytes) -> bool:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and "resourceSpans" in value


@FUZZ
@given(plans=st.lists(line_plan, max_size=40), pad=st.sampled_from([0, 0, BISECT_LEAF_LINES + 40]),
       crlf=st.booleans(), gz=st.booleans(), final_newline=st.booleans())
def test_flat_files_lose_no_good_span_and_account_for_every_line(plans, pad, crlf, gz,
                                                                 final_newline):
    f = _flat_file(plans, pad)
    # a random text or JSON line that happens to be an export request is counted by its
    # spans, not as one line; the identity and the good spans are checked either way
    exact = not any(_is_request(line) for line, (kind, _) in zip(f.lines, plans)
                    if kind in ("text", "json"))
    data = (b"\r\n" if crlf else b"\n").join(f.lines) + (b"\n" if final_newline else b"")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("spans.jsonl.gz" if gz else "spans.jsonl")
        src.write_bytes(gzip.compress(data) if gz else data)
        _check(src, Path(tmp) / "tel", f, exact_units=exact)


# ---------------------------------------------------------------------------- OTLP
def _otlp_span(span: dict[str, Any]) -> dict[str, Any]:
    return to_otlp([span])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]


bad_otlp_span = st.sampled_from(["not an object", "no attribute list", "attribute key",
                                 "too deep", "too many", "implausible", "bad value"])
scope_plan = st.one_of(
    st.tuples(st.just("scope"), st.lists(st.one_of(st.just("good"), bad_otlp_span),
                                         max_size=6)),
    st.tuples(st.just("bad scope"), st.sampled_from(["spans not a list", "not an object"])),
)
resource_plan = st.one_of(
    st.tuples(st.just("resource"), st.lists(scope_plan, max_size=3)),
    st.tuples(st.just("bad resource"), st.sampled_from(["not an object", "scopes not a list",
                                                        "deep"])),
)
request_plan = st.one_of(
    st.lists(resource_plan, max_size=3),
    st.sampled_from(["no resourceSpans", "resourceSpans not a list"]),
)


def _bad_otlp(f: _File, flavour: str) -> Any:
    span = _otlp_span(call_span(10**6 + f.next_n()))
    if flavour == "not an object":
        return [span]
    if flavour == "no attribute list":
        span["attributes"] = {"a": 1}
    elif flavour == "attribute key":
        span["attributes"].append({"value": {"intValue": "3"}})
    elif flavour == "too deep":
        span["attributes"].append({"key": "x.deep", "value": {"arrayValue": {
            "values": [_deep(40)]}}})
    elif flavour == "too many":
        span["attributes"] += [{"key": f"x.{i}", "value": {"intValue": str(i)}}
                               for i in range(130)]
    elif flavour == "implausible":
        span["attributes"].append({"key": Attr.INPUT_TOKENS,
                                   "value": {"intValue": "9" * 5000}})
    else:
        span["startTimeUnixNano"] = "soon"
    return span


def _request(f: _File, plan: Any) -> tuple[Any, int]:
    """An export request built from its plan, and how many units it must count."""
    if plan == "no resourceSpans":
        # not a request at all: a JSON object read as a (nameless) flat span
        return {"resource": {}, "spans": []}, 1
    if plan == "resourceSpans not a list":
        return {"resourceSpans": {"scopeSpans": []}}, 1
    resources, units = [], 0
    for kind, value in plan:
        if kind == "bad resource":
            units += 1
            resources.append({"not an object": ["x"], "scopes not a list": {
                "scopeSpans": {"spans": []}}, "deep": _deep(300)}[value])
            continue
        scopes = []
        for scope_kind, scope_value in value:
            if scope_kind == "bad scope":
                units += 1
                scopes.append({"spans not a list": {"spans": "x"},
                               "not an object": 7}[scope_value])
                continue
            spans = []
            for item in scope_value:
                units += 1
                if item == "good":
                    span = task_span(f.next_n())
                    f.add_good(span)
                    spans.append(_otlp_span(span))
                else:
                    spans.append(_bad_otlp(f, item))
            scopes.append({"scope": {"name": "fuzz"}, "spans": spans})
        resources.append({"resource": {"attributes": []}, "scopeSpans": scopes})
    return {"resourceSpans": resources}, max(units, 1)  # no unit: one ignored request


@FUZZ
@given(requests=st.lists(request_plan, min_size=1, max_size=6),
       form=st.sampled_from(["lines", "document", "gzip"]))
def test_otlp_files_lose_no_good_span_and_account_for_every_part(requests, form):
    f = _File()
    built = [_request(f, plan) for plan in (requests[:1] if form == "document" else requests)]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "otlp.json"
        if form == "document":  # one pretty-printed request a file
            src.write_text(json.dumps(built[0][0], indent=2))
        else:  # the Collector's file exporter: one request a line
            data = b"\n".join(json.dumps(r).encode() for r, _ in built) + b"\n"
            src.write_bytes(gzip.compress(data) if form == "gzip" else data)
        f.units = sum(units for _, units in built)
        _check(src, Path(tmp) / "tel", f)


# ---------------------------------------------------------------- values near the bounds
@FUZZ
@given(cost=st.floats(min_value=0, max_value=1e12, allow_nan=False),
       tokens=st.integers(0, 10**12), offset_days=st.integers(-20_000, 80_000),
       seconds=st.integers(0, 30 * 86_400))
def test_numbers_are_stored_or_quarantined_never_raised(cost, tokens, offset_days, seconds):
    start = T0 + offset_days * 86_400 * NS
    span = call_span(1, **{Attr.COST_USD: cost, Attr.INPUT_TOKENS: tokens,
                           Attr.CACHED_INPUT_TOKENS: 0})
    span.update(start_time_unix_nano=start, end_time_unix_nano=start + seconds * NS)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "s.jsonl"
        src.write_bytes(orjson.dumps(copy.deepcopy(span)) + b"\n")
        report = ingest_paths([src], Path(tmp) / "tel", now_ns=T0)
        assert report.balanced and report.spans_seen == 1
        plausible = (cost <= 1_000 and tokens <= 10**8 and start > 0
                     and 1_577_836_800 * NS <= start <= T0 + 86_400 * NS
                     and seconds <= 7 * 86_400)
        assert report.stored_total == int(plausible), (report.quarantined, span)
