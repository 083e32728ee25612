"""Property-based fuzzing of ingest's values (issue 14, the standing suite; beside
``test_ingest_fuzz``, which covers whole lines and OTLP requests).

Here good spans carry unknown attributes (they stay good), and among them are spans whose
one field or attribute holds an arbitrary JSON value (wrong type, huge integer, NaN or
Infinity literal, nested objects), arbitrary JSON documents, and lines of raw bytes. For
every file: no exception escapes; the count identity holds with every non-blank line read;
every good span is stored; nothing is stored but good spans and the altered ones.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telemetry_testkit import attempt_span, call_span, frames, quarantined, task_span

from telemetry.ingest import ingest_paths

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BUILDERS = {"task": task_span, "attempt": attempt_span, "call": call_span}
TABLE = {"agent.task": "tasks", "agent.attempt": "attempts", "llm.call": "calls"}

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 5, 2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
UNKNOWN_ATTRS = st.dictionaries(
    st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)
    .map(lambda k: f"x.fuzz.{k}"),
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
    max_size=5,
)

line_plan = st.one_of(
    st.tuples(st.just("good"), st.tuples(st.sampled_from(sorted(BUILDERS)), UNKNOWN_ATTRS)),
    st.tuples(st.just("field"), st.tuples(st.sampled_from(sorted(BUILDERS)),
                                          st.sampled_from(["name", "trace_id", "span_id",
                                                           "parent_span_id", "kind",
                                                           "start_time_unix_nano",
                                                           "end_time_unix_nano", "status",
                                                           "attributes"]),
                                          JSON_VALUES)),
    st.tuples(st.just("attr"), st.tuples(st.sampled_from(sorted(BUILDERS)), st.integers(0, 20),
                                         JSON_VALUES)),
    st.tuples(st.just("json"), JSON_VALUES),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=80)
              .map(lambda b: b.replace(b"\n", b"x").replace(b"\r", b"x"))),
)


def _dumps(value: Any) -> bytes:
    # json, not orjson: writes NaN/Infinity literals and integers beyond 64 bits as they come
    return json.dumps(value).encode()


def build(plans: list[tuple[str, Any]]) -> tuple[list[bytes], dict[str, set[str]], set[str]]:
    lines: list[bytes] = []
    good: dict[str, set[str]] = {"tasks": set(), "attempts": set(), "calls": set()}
    altered: set[str] = set()
    for n, (kind, value) in enumerate(plans, start=1):
        if kind == "good":
            builder, attrs = value
            span = BUILDERS[builder](n)
            span["attributes"].update(attrs)
            good[TABLE[span["name"]]].add(span["span_id"])
            lines.append(orjson.dumps(span))
        elif kind == "field":
            builder, field, junk = value
            span = BUILDERS[builder](n)
            span[field] = junk
            altered.add(BUILDERS[builder](n)["span_id"])
            if isinstance(junk, str):
                altered.add(junk)
            lines.append(_dumps(span))
        elif kind == "attr":
            builder, index, junk = value
            span = BUILDERS[builder](n)
            keys = sorted(span["attributes"])
            span["attributes"][keys[index % len(keys)]] = junk
            altered.add(span["span_id"])
            lines.append(_dumps(span))
        elif kind == "json":
            lines.append(_dumps(value))
        else:
            lines.append(value)
    return lines, good, altered


@FUZZ
@given(st.lists(line_plan, min_size=1, max_size=40))
def test_values_of_any_type_are_stored_or_accounted_for_and_good_spans_never_lost(plans):
    lines, good, altered = build(plans)
    with tempfile.TemporaryDirectory() as tmp:
        src, root = Path(tmp) / "spans.jsonl", Path(tmp) / "telemetry"
        src.write_bytes(b"\n".join(lines) + b"\n")
        report = ingest_paths([src], root)
        assert report.files_failed == {}
        assert report.balanced, report.as_dict()
        assert report.spans_seen == sum(1 for line in lines if line.strip()), report.as_dict()
        stored = {t: set(df["span_id"]) for t, df in frames(root).items()}
        for table, ids in good.items():
            assert ids <= stored[table], (table, ids - stored[table])
            assert stored[table] - ids <= altered, (table, stored[table] - ids)
        assert report.quarantined_total == len(quarantined(root))
        again = ingest_paths([src], root)
        assert again.balanced and again.stored_total == 0
        assert again.spans_seen == report.spans_seen
