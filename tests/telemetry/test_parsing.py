"""Reading and validating spans: the rules, quarantine in files, formats and features."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pandas as pd
import pytest
from telemetry_testkit import (
    T0,
    attempt_span,
    call_span,
    frames,
    mutate,
    quarantined,
    task_span,
    to_otlp,
    workload,
    write_flat,
)

from contracts.spans import FEATURE_PREFIX, Attr
from contracts.tables import TABLES
from telemetry import parsing
from telemetry.ingest import ingest_paths
from telemetry.parsing import BISECT_LEAF_LINES, Reason, check_span, coerce_feature
from telemetry.warehouse import read_table

# ------------------------------------------------------------------------- the rules
BAD_SPANS: list[tuple[str, dict[str, Any], Reason]] = [
    ("no trace id", mutate(call_span(), trace_id=...), Reason.MISSING_TRACE_ID),
    ("empty trace id", mutate(call_span(), trace_id=""), Reason.MISSING_TRACE_ID),
    ("no span id", mutate(call_span(), span_id=None), Reason.MISSING_SPAN_ID),
    ("short trace id", mutate(task_span(), trace_id="abc"), Reason.BAD_ID),
    ("non-hex span id", mutate(task_span(), span_id="zzzzzzzzzzzzzzzz"), Reason.BAD_ID),
    ("zero trace id", mutate(task_span(), trace_id="0" * 32), Reason.BAD_ID),
    ("bad parent", mutate(attempt_span(), parent_span_id="12"), Reason.BAD_ID),
    ("numeric span id", mutate(task_span(), span_id=12), Reason.BAD_ID),
    ("no task id", mutate(call_span(), **{Attr.TASK_ID: ...}), Reason.MISSING_TASK_ID),
    ("task id list", mutate(task_span(), **{Attr.TASK_ID: ["x"]}), Reason.MISSING_TASK_ID),
    ("no start", mutate(call_span(), start_time_unix_nano=...), Reason.BAD_TIMESTAMPS),
    ("float start", mutate(call_span(), start_time_unix_nano=1.5e18), Reason.BAD_TIMESTAMPS),
    ("string end", mutate(call_span(), end_time_unix_nano="soon"), Reason.BAD_TIMESTAMPS),
    ("end before start", mutate(call_span(), end_time_unix_nano=T0 - 1), Reason.BAD_TIMESTAMPS),
    ("zero start", mutate(task_span(), start_time_unix_nano=0, end_time_unix_nano=5),
     Reason.BAD_TIMESTAMPS),
    ("negative input", mutate(call_span(), **{Attr.INPUT_TOKENS: -1}), Reason.NEGATIVE_TOKENS),
    ("negative cached", mutate(call_span(), **{Attr.CACHED_INPUT_TOKENS: -3}),
     Reason.NEGATIVE_TOKENS),
    ("string tokens", mutate(call_span(), **{Attr.OUTPUT_TOKENS: "many"}), Reason.BAD_TOKENS),
    ("float tokens", mutate(call_span(), **{Attr.INPUT_TOKENS: 10.5}), Reason.BAD_TOKENS),
    ("missing tokens", mutate(call_span(), **{Attr.INPUT_TOKENS: ...}), Reason.BAD_TOKENS),
    ("cached > input", mutate(call_span(), **{Attr.CACHED_INPUT_TOKENS: 5000}),
     Reason.BAD_TOKENS),
    ("unknown outcome", mutate(task_span(), **{Attr.OUTCOME: "meh"}), Reason.UNKNOWN_OUTCOME),
    ("no outcome", mutate(task_span(), **{Attr.OUTCOME: ...}), Reason.UNKNOWN_OUTCOME),
    ("unknown purpose", mutate(attempt_span(), **{Attr.PURPOSE: "fun"}), Reason.UNKNOWN_PURPOSE),
    ("unknown cache", mutate(call_span(), **{Attr.CACHE: "hot"}), Reason.UNKNOWN_CACHE_STATUS),
    ("attempt zero", mutate(attempt_span(), **{Attr.ATTEMPT: 0}), Reason.BAD_ATTEMPT),
    ("attempt string", mutate(call_span(), **{Attr.ATTEMPT: "1"}), Reason.BAD_ATTEMPT),
    ("attempt missing", mutate(attempt_span(), **{Attr.ATTEMPT: ...}), Reason.BAD_ATTEMPT),
    ("propensity zero", mutate(attempt_span(), **{Attr.PROPENSITY: 0}), Reason.BAD_PROPENSITY),
    ("propensity > 1", mutate(attempt_span(), **{Attr.PROPENSITY: 1.5}),
     Reason.BAD_PROPENSITY),
    ("propensity text", mutate(attempt_span(), **{Attr.PROPENSITY: "high"}),
     Reason.BAD_PROPENSITY),
    ("passed as text", mutate(attempt_span(), **{Attr.PASSED: "yes"}), Reason.BAD_BOOL),
    ("verifier as int", mutate(task_span(), **{Attr.VERIFIER_PASSED: 1}), Reason.BAD_BOOL),
    ("review as text", mutate(task_span(), **{Attr.REVIEW_ACCEPTED: "no"}), Reason.BAD_BOOL),
    ("attempt no tier", mutate(attempt_span(), **{Attr.TIER: ...}), Reason.MISSING_TIER),
    ("call empty tier", mutate(call_span(), **{Attr.TIER: ""}), Reason.MISSING_TIER),
    ("negative cost", mutate(call_span(), **{Attr.COST_USD: -0.1}), Reason.BAD_COST),
    ("text cost", mutate(attempt_span(), **{Attr.COST_USD: "cheap"}), Reason.BAD_COST),
    ("negative verifier cost", mutate(task_span(), **{Attr.VERIFIER_COST_USD: -1}),
     Reason.BAD_COST),
    ("family object", mutate(task_span(), **{Attr.FAMILY: {"a": 1}}), Reason.BAD_STRING),
    ("feature list", mutate(task_span(), **{FEATURE_PREFIX + "tags": [1, 2]}),
     Reason.BAD_FEATURE),
    ("no name", mutate(task_span(), name=...), Reason.MISSING_NAME),
]


@pytest.mark.parametrize("label,span,reason", BAD_SPANS, ids=[b[0] for b in BAD_SPANS])
def test_each_rule_rejects_its_defect(label, span, reason):
    rejection = check_span(span)
    assert rejection is not None and rejection.reason is reason
    assert rejection.message  # says what was wrong


@pytest.mark.parametrize("span", [
    task_span(), attempt_span(), call_span(),
    task_span(**{Attr.REVIEW_ACCEPTED: False, Attr.VERIFIER_COST_USD: None}),
    attempt_span(**{Attr.PROPENSITY: None, Attr.COST_USD: 0, Attr.ADAPTER: "lora-a"}),
    attempt_span(**{Attr.PROPENSITY: 1}),
    call_span(**{Attr.CACHED_INPUT_TOKENS: None, Attr.COST_USD: 0.01}),
    call_span(**{Attr.POLICY_VERSION: 7}),  # an integer version is kept as its text
    mutate(task_span(), trace_id="A" * 32),  # upper-case hex is normalised
    mutate(task_span(), name="http.request"),  # other spans are ignored, not quarantined
])
def test_good_spans_pass(span):
    assert check_span(span) is None


@pytest.mark.parametrize("value,expected", [
    (3, 3), (3.0, 3), (2.5, 2.5), ("x", "x"), (True, True),
])
def test_coerce_feature_canonical_numbers(value, expected):
    result = coerce_feature(value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value", [[1], {"a": 1}, float("nan"), float("inf")])
def test_coerce_feature_rejects_non_scalars(value):
    assert coerce_feature(value) is parsing.BAD


# ------------------------------------------------------------------- quarantine in files
def test_bad_spans_in_a_large_file_are_isolated_with_reason_and_line(tmp_path):
    """Value defects (judged by Arrow's column path) and type defects (which make Arrow
    refuse a chunk, so it is bisected) alike: every good span stored, every bad one
    quarantined with its own reason, file and line number."""
    good = workload(BISECT_LEAF_LINES)  # large enough to take the Arrow path
    spans: list[Any] = list(good)
    expected: dict[int, Reason] = {}  # 1-based line -> reason
    for k, (_, span, reason) in enumerate(BAD_SPANS):
        spans.insert(7 + k * 13, span)
    for k, (_, _, reason) in enumerate(BAD_SPANS):
        expected[8 + k * 13] = reason
    broken = {3: "[1, 2]", len(spans) - 5: "{not json"}  # 0-based; these were good spans
    lost = {spans[i]["span_id"] for i in broken}
    expected |= {i + 1: Reason.INVALID_JSON for i in broken}
    src = write_flat(tmp_path / "spans.jsonl", spans, raw_lines=broken)
    root = tmp_path / "tel"
    report = ingest_paths([src], root)

    records = quarantined(root)
    assert {r["line"]: r["reason"] for r in records} == {
        line: str(reason) for line, reason in expected.items()}
    assert all(r["source"] == str(src) and r["message"] for r in records)
    by_line = {r["line"]: r for r in records}
    assert by_line[len(spans) - 4]["original"] == "{not json"
    assert json.loads(by_line[8]["original"]) == BAD_SPANS[0][1]
    stored_ids = {sid for df in frames(root).values() for sid in df["span_id"]}
    assert stored_ids == {s["span_id"] for s in good} - lost
    assert report.quarantined_total == len(expected)
    assert report.spans_seen == report.stored_total + report.quarantined_total + \
        sum(report.duplicates_skipped.values()) + report.ignored


def test_a_type_change_after_row_zero_is_split_in_log_depth(tmp_path):
    """Arrow names row 0 when a later row changes an attribute's type (a string policy
    version, then numbers, as the driver and the gateway write them); peeling one line per
    level once recursed past Python's limit on a day's file."""
    spans = workload(1500)
    for span in spans[1:]:
        if Attr.POLICY_VERSION in span["attributes"]:
            span["attributes"][Attr.POLICY_VERSION] = 4
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", spans)], tmp_path / "tel")
    assert report.stored_total == len(spans) and report.quarantined_total == 0


def test_invalid_line_in_the_middle_loses_no_good_span(tmp_path):
    spans = workload(400)
    src = write_flat(tmp_path / "s.jsonl", spans[:600] + [None] + spans[600:],
                     raw_lines={600: '{"name": "agent.task", "trace_id": '})
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == len(spans)
    assert report.quarantined == {"invalid_json": 1}
    [record] = quarantined(tmp_path / "tel")
    assert record["line"] == 601 and record["original"].startswith('{"name"')


def test_blank_lines_crlf_and_a_missing_final_newline(tmp_path):
    spans = workload(200)
    text = "\r\n".join(json.dumps(s) for s in spans[:300]) + "\r\n\r\n\n   \n" + \
        "\n".join(json.dumps(s) for s in spans[300:])
    src = tmp_path / "s.jsonl"
    src.write_text(text)  # no newline at the end
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == len(spans) and report.quarantined_total == 0


def test_two_objects_on_one_line_are_invalid_json(tmp_path):
    spans = workload(200)
    glued = json.dumps(spans[10]) + json.dumps(spans[11])
    src = write_flat(tmp_path / "s.jsonl", spans[:10] + [None] + spans[12:],
                     raw_lines={10: glued})
    report = ingest_paths([src], tmp_path / "tel")
    assert report.quarantined == {"invalid_json": 1}
    assert report.stored_total == len(spans) - 2


# ------------------------------------------------------------------------------ formats
def test_otlp_json_and_flat_forms_give_identical_tables(tmp_path):
    spans = workload(150)  # 450 spans: the flat file takes the Arrow path
    spans[5]["attributes"][FEATURE_PREFIX + "ratio"] = 0.25
    spans[8]["attributes"][FEATURE_PREFIX + "note"] = 'say "hi"\\ \u00e9'
    flat_root, otlp_root, pretty_root, gz_root = (tmp_path / n for n in "abcd")
    ingest_paths([write_flat(tmp_path / "flat.jsonl", spans)], flat_root)
    # the Collector's file exporter: one export request per line
    lines = tmp_path / "otlp.json"
    lines.write_text("\n".join(json.dumps(to_otlp(spans[i:i + 100]))
                               for i in range(0, len(spans), 100)) + "\n")
    ingest_paths([lines], otlp_root)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(to_otlp(spans), indent=2))
    ingest_paths([pretty], pretty_root)
    gz = tmp_path / "otlp.json.gz"
    gz.write_bytes(gzip.compress(lines.read_bytes()))
    ingest_paths([gz], gz_root)
    expected = frames(flat_root)
    assert len(expected["tasks"]) == 150
    for root in (otlp_root, pretty_root, gz_root):
        got = frames(root)
        for table in TABLES:
            pd.testing.assert_frame_equal(got[table], expected[table])


def test_gzipped_flat_file(tmp_path):
    src = tmp_path / "s.jsonl.gz"
    src.write_bytes(gzip.compress("\n".join(json.dumps(s) for s in workload(200)).encode()))
    assert ingest_paths([src], tmp_path / "tel").stored_total == 600


def test_otlp_quarantine_keeps_the_span_object(tmp_path):
    spans = [task_span(1), mutate(call_span(1), **{Attr.INPUT_TOKENS: -5})]
    src = tmp_path / "o.json"
    src.write_text(json.dumps(to_otlp(spans)) + "\n{oops\n" + json.dumps({"resourceSpans": 3}))
    report = ingest_paths([src], tmp_path / "tel")
    assert report.quarantined == {"negative_tokens": 1, "invalid_json": 1, "bad_otlp": 1}
    record = next(r for r in quarantined(tmp_path / "tel") if r["reason"] == "negative_tokens")
    assert record["line"] == 1 and record["original"]["spanId"] == spans[1]["span_id"]


# ----------------------------------------------------------------------------- features
def test_features_json_object_without_prefix_sorted_keys_same_on_both_paths(tmp_path):
    def tasks() -> list[dict[str, Any]]:
        out = []
        for n in range(300):
            span = task_span(n, **{FEATURE_PREFIX + "size": n % 3 or None,
                                   FEATURE_PREFIX + "score": 1.0 if n % 2 else 0.5,
                                   FEATURE_PREFIX + "flag": n % 2 == 0,
                                   FEATURE_PREFIX + "quote": 'a"b' if n == 4 else None})
            out.append(span)
        return out

    root_arrow, root_lines = tmp_path / "a", tmp_path / "b"
    spans = tasks()
    ingest_paths([write_flat(tmp_path / "big.jsonl", spans)], root_arrow)  # Arrow path
    for k in range(0, 300, 50):  # small files take the line-by-line path
        ingest_paths([write_flat(tmp_path / f"small{k}.jsonl", spans[k:k + 50])], root_lines)
    a, b = read_table(root_arrow, "tasks"), read_table(root_lines, "tasks")
    pd.testing.assert_frame_equal(a.sort_values("span_id").reset_index(drop=True),
                                  b.sort_values("span_id").reset_index(drop=True))
    features = a.set_index("task_id")["features"]
    assert features["task-4"] == ('{"difficulty":2,"flag":true,"lang":"py","quote":"a\\"b",'
                                  '"score":0.5,"size":1}')
    assert json.loads(features["task-3"]) == {"difficulty": 2, "flag": False, "lang": "py",
                                              "score": 1}
    no_features = {k: v for k, v in task_span(0)["attributes"].items()
                   if not k.startswith(FEATURE_PREFIX)}
    plain = task_span(0)
    plain["attributes"] = no_features
    ingest_paths([write_flat(tmp_path / "plain.jsonl", [plain])], tmp_path / "c")
    assert read_table(tmp_path / "c", "tasks")["features"].tolist() == ["{}"]
