"""The telemetry ingester: rules, quarantine, formats, idempotency and storage."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from contracts.errors import PermanentError
from contracts.spans import (
    FEATURE_PREFIX,
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_TASK,
    Attr,
    CacheStatus,
    Outcome,
    Purpose,
)
from contracts.tables import TABLES
from telemetry import ingest as ingest_module
from telemetry.ingest import (
    BISECT_LEAF_LINES,
    Reason,
    TelemetryWarehouse,
    check_span,
    coerce_feature,
    ingest_paths,
    list_days,
    read_table,
)

DAY = "2026-11-20"
T0 = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()) * 10**9


# ------------------------------------------------------------------------ span builders
def _hex(n: int, width: int) -> str:
    return f"{n + 1:0{width}x}"


def task_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.TASK_ID: f"task-{n}", Attr.FAMILY: "expr_eval", Attr.TEAM: "payments",
        Attr.REPO: "api", Attr.AGENT: "sim", Attr.OUTCOME: str(Outcome.GREEN),
        Attr.VERIFIER_PASSED: True, Attr.VERIFIER_COST_USD: 0.002,
        Attr.POLICY_VERSION: "3", FEATURE_PREFIX + "difficulty": 2,
        FEATURE_PREFIX + "lang": "py",
    }
    return _span(SPAN_TASK, n, 0, None, {**base, **attrs})


def attempt_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.TASK_ID: f"task-{n}", Attr.ATTEMPT: 1, Attr.TIER: "small",
        Attr.VARIANT: "int8", Attr.PASSED: True, Attr.PURPOSE: str(Purpose.SERVE),
        Attr.PROPENSITY: 0.8, Attr.POLICY_VERSION: "3",
    }
    return _span(SPAN_ATTEMPT, n, 1, _hex(n * 10, 16), {**base, **attrs})


def call_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.REQUEST_MODEL: "qwen-small", Attr.INPUT_TOKENS: 1000, Attr.OUTPUT_TOKENS: 100,
        Attr.TIER: "small", Attr.VARIANT: "int8", Attr.CACHE: str(CacheStatus.PREFIX),
        Attr.CACHED_INPUT_TOKENS: 400, Attr.TASK_ID: f"task-{n}", Attr.ATTEMPT: 1,
        Attr.POLICY_VERSION: "3",
    }
    return _span(SPAN_CALL, n, 2, _hex(n * 10 + 1, 16), {**base, **attrs})


def _span(name: str, n: int, offset: int, parent: str | None, attrs: dict) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": _hex(n, 32),
        "span_id": _hex(n * 10 + offset, 16),
        "parent_span_id": parent,
        "start_time_unix_nano": T0 + n * 1000 + offset,
        "end_time_unix_nano": T0 + n * 1000 + offset + 500,
        "attributes": {k: v for k, v in attrs.items() if v is not None},
    }


def workload(tasks: int) -> list[dict[str, Any]]:
    spans = []
    for n in range(tasks):
        spans += [call_span(n), attempt_span(n), task_span(n)]
    return spans


def write_flat(path: Path, spans: list[Any], *, raw_lines: dict[int, str] | None = None) -> Path:
    """Spans as JSON lines; ``raw_lines`` replaces given (0-based) lines with raw text."""
    lines = [json.dumps(s) for s in spans]
    for index, text in (raw_lines or {}).items():
        lines[index] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def to_otlp(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat spans as one OTLP/JSON export request (int64 as strings, as proto3 JSON does)."""
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": v}

    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "fleet-autopilot"}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [{
            "traceId": s["trace_id"], "spanId": s["span_id"],
            "parentSpanId": s["parent_span_id"] or "", "name": s["name"], "kind": 1,
            "startTimeUnixNano": str(s["start_time_unix_nano"]),
            "endTimeUnixNano": str(s["end_time_unix_nano"]),
            "attributes": [{"key": k, "value": value(v)} for k, v in s["attributes"].items()],
            "status": {},
        } for s in spans]}],
    }]}


def quarantined(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted((root / "quarantine").glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def frames(root: Path) -> dict[str, pd.DataFrame]:
    return {t: read_table(root, t).sort_values("span_id").reset_index(drop=True)
            for t in TABLES}


def mutate(span: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy with top-level fields or attributes changed; ``...`` removes one."""
    span = copy.deepcopy(span)
    for key, value in changes.items():
        key = key.replace("__", ".")
        target = span if key in span else span["attributes"]
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    return span


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
    assert coerce_feature(value) is ingest_module.BAD


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


def test_other_span_names_are_ignored_not_quarantined(tmp_path):
    spans = workload(5) + [mutate(call_span(99), name="http.request")]
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", spans)], tmp_path / "tel")
    assert report.ignored == 1 and report.quarantined_total == 0
    assert report.stored == {"tasks": 5, "attempts": 5, "calls": 5}


def test_unreadable_files_are_reported_not_raised(tmp_path):
    good = write_flat(tmp_path / "good.jsonl", workload(3))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    report = ingest_paths([tmp_path / "missing.jsonl", broken, good], tmp_path / "tel")
    assert report.files_read == 1
    assert set(report.files_failed) == {str(tmp_path / "missing.jsonl"), str(broken)}
    assert report.stored_total == 9


# -------------------------------------------------------------------------- idempotency
def test_same_file_twice_is_stored_once(tmp_path):
    src = write_flat(tmp_path / "s.jsonl", workload(300))
    root = tmp_path / "tel"
    first = ingest_paths([src], root)
    second = ingest_paths([src], root)
    assert first.stored_total == 900
    assert second.stored_total == 0 and sum(second.duplicates_skipped.values()) == 900
    assert sum(len(df) for df in frames(root).values()) == 900
    assert len(list((root / "calls" / f"day={DAY}").glob("part-*.parquet"))) == 1


def test_duplicates_inside_one_file_and_across_files_of_a_batch(tmp_path):
    spans = workload(300)
    a = write_flat(tmp_path / "a.jsonl", spans + spans[:30])
    b = write_flat(tmp_path / "b.jsonl", spans[100:200])
    root = tmp_path / "tel"
    report = ingest_paths([a, b], root)
    assert report.stored_total == 900
    assert sum(report.duplicates_skipped.values()) == 130
    assert report.spans_seen == 1030
    assert all(df["span_id"].is_unique for df in frames(root).values())


def test_incremental_ingest_appends_and_compacts(tmp_path):
    spans = workload(30)
    root = tmp_path / "tel"
    for k in range(3):
        ingest_paths([write_flat(tmp_path / f"{k}.jsonl", spans[k * 30:(k + 1) * 30])], root,
                     max_files_per_day=5)
    partition = root / "tasks" / f"day={DAY}"
    assert len(list(partition.glob("part-*.parquet"))) == 3
    assert len(read_table(root, "tasks")) == 30
    TelemetryWarehouse(root).compact()
    assert len(list(partition.glob("part-*.parquet"))) == 1
    assert len(read_table(root, "tasks")) == 30


def test_reader_ignores_temporary_files_and_tolerates_a_leftover_copy(tmp_path):
    root = tmp_path / "tel"
    ingest_paths([write_flat(tmp_path / "s.jsonl", workload(10))], root)
    partition = root / "calls" / f"day={DAY}"
    [part] = partition.glob("part-*.parquet")
    (partition / ".part-half-written.parquet.tmp").write_bytes(b"PAR1 half")
    # a crash after a compaction's rename and before its clean-up leaves both files
    shutil.copy(part, partition / "part-leftover.parquet")
    assert len(read_table(root, "calls")) == 10
    ingest_paths([write_flat(tmp_path / "t.jsonl", workload(12))], root)
    assert len(list(partition.glob("part-*.parquet"))) == 1
    assert len(read_table(root, "calls")) == 12


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


# -------------------------------------------------------------------- days and reading
def test_day_partitions_follow_utc_start_across_midnight(tmp_path):
    midnight = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp()) * 10**9
    before = mutate(task_span(1), start_time_unix_nano=midnight - 1,
                    end_time_unix_nano=midnight + 10**9)  # ends after midnight: still the 20th
    after = mutate(task_span(2), start_time_unix_nano=midnight,
                   end_time_unix_nano=midnight + 1)
    root = tmp_path / "tel"
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", [before, after])], root)
    assert report.days == ("2026-11-20", "2026-11-21")
    assert list_days(root) == ["2026-11-20", "2026-11-21"]
    assert (root / "tasks" / "day=2026-11-20").is_dir()
    assert read_table(root, "tasks", days=["2026-11-21"])["task_id"].tolist() == ["task-2"]
    assert read_table(root, "tasks", start_day="2026-11-21")["task_id"].tolist() == ["task-2"]
    assert read_table(root, "tasks", end_day="2026-11-20")["task_id"].tolist() == ["task-1"]
    assert len(read_table(root, "tasks", start_day="2026-11-20", end_day="2026-11-21")) == 2
    assert TelemetryWarehouse(root).days("calls") == []


def test_read_table_has_exactly_the_declared_columns_and_dtypes(tmp_path):
    root = tmp_path / "tel"
    ingest_paths([write_flat(tmp_path / "s.jsonl", workload(3))], root)
    for table, columns in TABLES.items():
        for frame in (read_table(root, table), read_table(tmp_path / "empty", table)):
            assert list(frame.columns) == list(columns)
            assert {c: str(frame[c].dtype) for c in frame} == {
                c: str(pd.api.types.pandas_dtype(d)) for c, d in columns.items()}
    calls = read_table(root, "calls")
    assert calls["cache"].tolist() == ["prefix"] * 3
    assert calls["cost_usd"].isna().all() and calls["adapter"].isna().all()
    attempts = read_table(root, "attempts")
    assert attempts["parent_span_id"].tolist() == [_hex(0, 16), _hex(10, 16), _hex(20, 16)]
    assert read_table(root, "tasks")["review_accepted"].isna().all()


def test_read_table_rejects_unknown_table_and_bad_day(tmp_path):
    with pytest.raises(PermanentError):
        read_table(tmp_path, "spans")
    with pytest.raises(PermanentError):
        read_table(tmp_path, "tasks", start_day="20-11-2026")
