"""Hostile span files (issue 14, defect 1): no single line may take an ingest down.

A span with an unknown attribute nested a few thousand arrays deep used to crash the
process inside pyarrow (a segfault: nothing stored, nothing quarantined, every good span
of the file lost). What a span may carry is now bounded before any parser builds columns
from it (``contracts.spans.SpanLimits``), and a span beyond a bound is quarantined with a
reason that names the bound. The crash tests run ingest in a child process, so a
regression fails the test instead of killing the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from telemetry_testkit import call_span, mutate, quarantined, task_span, to_otlp, workload

from contracts.spans import FEATURE_PREFIX, Attr
from telemetry.ingest import ingest_paths

REPO = Path(__file__).resolve().parents[2]
TESTKIT = Path(__file__).resolve().parent


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _hostile_line(depth: int, n: int = 999) -> str:
    """A call span that is valid but for one unknown attribute nested ``depth`` deep."""
    span = call_span(n)
    span["attributes"]["x.unknown"] = "@"
    return json.dumps(span).replace('"@"', _nested(depth))


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


_CHILD = """
import json, sys
sys.path[:0] = [sys.argv[3]]
from telemetry.ingest import ingest_paths
print(json.dumps(ingest_paths([sys.argv[1]], sys.argv[2]).as_dict()))
"""


def _ingest_in_child(src: Path, root: Path) -> dict[str, Any]:
    """Ingest in a child process; a crash there is a failed assertion here, not a dead run."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(root), str(REPO)],
                          check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, (
        f"ingest died with exit status {proc.returncode} (-11 is a segfault):\n"
        f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("depth", [3_000, 100_000], ids=["crashed-in-take", "crashed-in-read"])
def test_a_deeply_nested_attribute_does_not_crash_ingest_and_loses_no_good_span(
        tmp_path, depth):
    good = [json.dumps(s) for s in workload(200)]  # 600 lines: the file takes Arrow's path
    src = _write_lines(tmp_path / "hostile.jsonl",
                       good[:300] + [_hostile_line(depth)] + good[300:])
    report = _ingest_in_child(src, tmp_path / "tel")
    assert report["stored_total"] == 600
    assert report["quarantined"] == {"too_deep": 1}
    [record] = quarantined(tmp_path / "tel")
    assert record["line"] == 301 and "max_depth" in record["message"]


# ------------------------------------------------------------------------ each bound
def _many_attributes(n: int) -> dict[str, Any]:
    span = call_span(997)
    span["attributes"].update({f"x.extra.{i}": i for i in range(n)})
    return span


BOUNDS: list[tuple[str, Any, str, str]] = [
    ("nesting", json.loads(_hostile_line(40, 996)), "too_deep", "max_depth"),
    ("attribute count", _many_attributes(200), "too_many_attributes", "max_attributes"),
    ("long string", mutate(call_span(995), **{Attr.TASK_ID: "t" * 70_000}), "string_too_long",
     "max_string_chars"),
    ("long key", mutate(call_span(994), **{"k" * 70_000: 1}), "string_too_long",
     "max_string_chars"),
    ("line size", mutate(call_span(993), **{f"x.blob.{i}": "b" * 60_000 for i in range(20)}),
     "too_large", "max_line_bytes"),
]


@pytest.mark.parametrize("size", ["small", "large"], ids=["line-path", "arrow-path"])
@pytest.mark.parametrize("label,span,reason,bound", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_quarantines_with_a_reason_naming_it_on_either_path(
        tmp_path, size, label, span, reason, bound):
    good = workload(3 if size == "small" else 200)
    src = _write_lines(tmp_path / "s.jsonl", [json.dumps(s) for s in good[:4]] + [
        json.dumps(span)] + [json.dumps(s) for s in good[4:]])
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == len(good)
    assert report.quarantined == {reason: 1}
    [record] = quarantined(tmp_path / "tel")
    assert record["line"] == 5 and bound in record["message"]


def test_the_bounds_are_configurable(tmp_path):
    from contracts.spans import SpanLimits

    src = _write_lines(tmp_path / "s.jsonl", [json.dumps(_many_attributes(200))])
    assert ingest_paths([src], tmp_path / "a").quarantined == {"too_many_attributes": 1}
    report = ingest_paths([src], tmp_path / "b", limits=SpanLimits(max_attributes=256))
    assert report.stored_total == 1 and report.quarantined_total == 0
    with pytest.raises(ValueError, match="max_depth"):
        SpanLimits(max_depth=5_000)  # beyond what the quarantine writer can hold


def test_a_huge_line_is_not_held_whole_and_its_quarantine_record_is_bounded(tmp_path):
    good = [json.dumps(s) for s in workload(100)]
    huge = json.dumps(mutate(call_span(990), **{"x.blob": "z" * (3 << 20)}))
    src = _write_lines(tmp_path / "s.jsonl", good[:150] + [huge] + good[150:])
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 300 and report.quarantined == {"too_large": 1}
    [record] = quarantined(tmp_path / "tel")
    assert record["line"] == 151 and len(record["original"]) < 64 << 10


def test_many_distinct_unknown_attribute_keys_do_not_stall_the_reader(tmp_path):
    """Arrow inferred a struct field per distinct key across a chunk, in time quadratic in
    their number (minutes for a few MB); unknown attributes are no longer inferred."""
    lines = []
    for n in range(1_500):
        span = call_span(n)
        span["attributes"].update({f"x.{n}.{k}": k for k in range(100)})
        lines.append(json.dumps(span))
    src = _write_lines(tmp_path / "keys.jsonl", lines)
    t0 = time.perf_counter()
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 1_500
    assert time.perf_counter() - t0 < 20


def test_hostile_otlp_values_are_quarantined_not_raised(tmp_path):
    spans = workload(4)
    request = to_otlp(spans)
    otlp_spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    # an integer of 5,000 digits (Python refuses to convert one), an attribute nested
    # 600 deep (more than the quarantine writer's JSON encoder accepts), and a resource
    # entry nested 300 deep
    otlp_spans[0]["attributes"].append({"key": Attr.INPUT_TOKENS,
                                        "value": {"intValue": "9" * 5_000}})
    deep: Any = {"stringValue": "x"}
    for _ in range(200):
        deep = {"arrayValue": {"values": [deep]}}
    otlp_spans[1]["attributes"].append({"key": "x.deep", "value": deep})
    bad_entry: Any = []
    for _ in range(300):
        bad_entry = [bad_entry]
    request["resourceSpans"].append(bad_entry)
    src = tmp_path / "o.json"
    src.write_text(json.dumps(request) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == len(spans) - 2
    assert report.quarantined == {"bad_tokens": 1, "too_deep": 1, "bad_otlp": 1}
    assert len(quarantined(tmp_path / "tel")) == 3


def test_a_deep_feature_value_is_a_bad_feature_on_either_path(tmp_path):
    for n_good in (3, 200):
        span = task_span(999)
        span["attributes"][FEATURE_PREFIX + "deep"] = "@"
        line = json.dumps(span).replace('"@"', _nested(10))
        good = [json.dumps(s) for s in workload(n_good)]
        root = tmp_path / f"tel{n_good}"
        report = ingest_paths([_write_lines(tmp_path / f"{n_good}.jsonl", good + [line])], root)
        assert report.quarantined == {"bad_feature": 1}
        assert report.stored_total == len(good)


def test_a_too_deep_or_broken_first_line_does_not_make_the_file_one_document(tmp_path):
    """Found by the fuzz suite in a draft of this change: a first line too deep to parse,
    then good lines and no final newline, was read as one (too deep) document and the good
    spans were lost. A file is one document only when the whole of it parses as one."""
    good = [json.dumps(s) for s in workload(2)]
    deep = tmp_path / "deep.jsonl"
    deep.write_text("\n".join([_hostile_line(1_100)] + good))  # no final newline
    report = ingest_paths([deep], tmp_path / "a")
    assert report.stored_total == 6 and report.quarantined == {"too_deep": 1}
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(['{"name": "x", "attributes": {"a": [',
                                 _nested(1_100)] + good))
    report = ingest_paths([broken], tmp_path / "b")
    assert report.stored_total == 6
    assert report.quarantined == {"invalid_json": 1, "too_deep": 1}
