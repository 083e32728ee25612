"""Implausible values and span ids re-sent on a later day (issue 14, defect 9).

A cost of 1e308 (cost per Green PR became 3e304), 1e15 tokens and a start in the year 2200
(which created a partition) were stored. They are quarantined now against configurable
bounds (``contracts.spans.SpanLimits``). And a span id is stored once per table whatever
day its spans claim: the warehouse keeps a compact index of the stored span ids.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from telemetry_testkit import (
    DAY,
    T0,
    attempt_span,
    call_span,
    frames,
    mutate,
    quarantined,
    task_span,
    workload,
    write_flat,
)

from contracts.spans import Attr
from telemetry.ingest import TelemetryWarehouse, ingest_paths
from telemetry.warehouse import list_days

NS = 10**9
Y2200 = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp()) * NS
Y2010 = int(datetime(2010, 1, 1, tzinfo=UTC).timestamp()) * NS

IMPLAUSIBLE = [
    ("call cost 1e308", mutate(call_span(900), **{Attr.COST_USD: 1e308}), "implausible_cost"),
    ("attempt cost", mutate(attempt_span(901), **{Attr.COST_USD: 5e6}), "implausible_cost"),
    ("verifier cost", mutate(task_span(902), **{Attr.VERIFIER_COST_USD: 1e308}),
     "implausible_cost"),
    ("1e15 input tokens", mutate(call_span(903), **{Attr.INPUT_TOKENS: 10**15}),
     "implausible_tokens"),
    ("1e15 output tokens", mutate(call_span(904), **{Attr.OUTPUT_TOKENS: 10**15}),
     "implausible_tokens"),
    ("start in 2200", mutate(task_span(905), start_time_unix_nano=Y2200,
                             end_time_unix_nano=Y2200 + 5), "implausible_time"),
    ("start in 2010", mutate(call_span(906), start_time_unix_nano=Y2010,
                             end_time_unix_nano=Y2010 + 5), "implausible_time"),
    ("a month long", mutate(attempt_span(907), end_time_unix_nano=T0 + 30 * 86_400 * NS),
     "implausible_time"),
]


@pytest.mark.parametrize("size", [1, 200], ids=["line-path", "arrow-path"])
@pytest.mark.parametrize("label,span,reason", IMPLAUSIBLE, ids=[c[0] for c in IMPLAUSIBLE])
def test_implausible_values_are_quarantined(tmp_path, size, label, span, reason):
    good = workload(size)
    root = tmp_path / "tel"
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", good + [span])], root)
    assert report.quarantined == {reason: 1}
    assert report.stored_total == len(good)
    assert list_days(root) == [DAY]  # no partition for the year 2200 (or 2010)
    [record] = quarantined(root)
    assert record["line"] == len(good) + 1 and record["message"]


def test_the_value_bounds_are_configurable_and_the_clock_is_the_ingests(tmp_path):
    from contracts.spans import SpanLimits

    many = mutate(call_span(1), **{Attr.INPUT_TOKENS: 10**9, Attr.OUTPUT_TOKENS: 10})
    src = write_flat(tmp_path / "s.jsonl", [many])
    assert ingest_paths([src], tmp_path / "a").quarantined == {"implausible_tokens": 1}
    report = ingest_paths([src], tmp_path / "b", limits=SpanLimits(max_tokens=10**10))
    assert report.stored_total == 1
    # a day ahead of the ingest's clock is clock skew; two days ahead is not
    early = T0 - 2 * 86_400 * NS
    tokens = SpanLimits(max_tokens=10**10)
    assert ingest_paths([src], tmp_path / "c", limits=tokens, now_ns=early).quarantined == {
        "implausible_time": 1}
    skew = SpanLimits(max_tokens=10**10, max_future_s=3 * 86_400)
    assert ingest_paths([src], tmp_path / "d", limits=skew, now_ns=early).stored_total == 1


def test_check_span_applies_the_same_bounds():
    from telemetry.parsing import Reason, check_span

    assert check_span(IMPLAUSIBLE[0][1]).reason is Reason.IMPLAUSIBLE_COST
    assert check_span(IMPLAUSIBLE[3][1]).reason is Reason.IMPLAUSIBLE_TOKENS
    assert check_span(IMPLAUSIBLE[5][1]).reason is Reason.IMPLAUSIBLE_TIME
    assert check_span(call_span(1)) is None


# ------------------------------------------------------------------ across days
def _shifted(spans, days: int):
    delta = days * 86_400 * NS
    return [dict(s, start_time_unix_nano=s["start_time_unix_nano"] + delta,
                 end_time_unix_nano=s["end_time_unix_nano"] + delta) for s in spans]


def test_span_ids_resent_on_a_later_day_are_duplicates(tmp_path):
    spans = workload(300)
    root = tmp_path / "tel"
    first = ingest_paths([write_flat(tmp_path / "a.jsonl", spans)], root)
    again = ingest_paths([write_flat(tmp_path / "b.jsonl", _shifted(spans, 2))], root)
    assert first.stored_total == 900
    assert again.stored_total == 0 and sum(again.duplicates_skipped.values()) == 900
    assert list_days(root) == [DAY]
    assert sum(len(df) for df in frames(root).values()) == 900


def test_cross_day_duplicates_inside_one_batch_and_partly_new_files(tmp_path):
    spans = workload(100)
    root = tmp_path / "tel"
    ingest_paths([write_flat(tmp_path / "a.jsonl", spans[:150])], root)
    later = _shifted(spans, 1)
    report = ingest_paths([write_flat(tmp_path / "b.jsonl", later),
                           write_flat(tmp_path / "c.jsonl", _shifted(spans, 3))], root)
    assert report.stored_total == 150
    assert sum(report.duplicates_skipped.values()) == 450
    ids = [sid for df in frames(root).values() for sid in df["span_id"]]
    assert len(ids) == len(set(ids)) == 300


def test_the_id_index_heals_and_forgets_deleted_days(tmp_path):
    spans = workload(50)
    root = tmp_path / "tel"
    src = write_flat(tmp_path / "a.jsonl", spans)
    ingest_paths([src], root)
    for index in root.glob("*/_span_ids*"):
        index.unlink()  # lost or never written (a warehouse from before the index)
    shifted = write_flat(tmp_path / "b.jsonl", _shifted(spans, 1))
    assert ingest_paths([shifted], root).stored_total == 0
    # an operator deletes a day (retention): its spans may be ingested again
    for table in ("tasks", "attempts", "calls"):
        shutil.rmtree(root / table / f"day={DAY}")
    assert ingest_paths([shifted], root).stored_total == 150
    # compaction and appends keep the index true
    TelemetryWarehouse(root).compact()
    more = write_flat(tmp_path / "c.jsonl", workload(60)[150:])
    assert ingest_paths([more], root, max_files_per_day=3).stored_total == 30
    assert ingest_paths([src, more], root, max_files_per_day=3).stored_total == 0


def test_a_corrupt_or_stale_id_index_is_rebuilt_from_the_files(tmp_path):
    import numpy as np
    import pyarrow as pa

    from telemetry.warehouse import SpanIdIndex, span_ids_u64

    spans = workload(40)
    root = tmp_path / "tel"
    ingest_paths([write_flat(tmp_path / "a.jsonl", spans)], root)
    for index in root.glob("*/_span_ids.idx"):
        index.write_bytes(index.read_bytes()[:-5])  # torn
    assert ingest_paths([write_flat(tmp_path / "b.jsonl", _shifted(spans, 1))],
                        root).stored_total == 0
    assert len(SpanIdIndex.load(root, "calls").ids) == 40
    values, valid = span_ids_u64(pa.array(["00000000000000ff", "xyz", None,
                                           "ffffffffffffffff", "0000000000000g00"]))
    assert valid.tolist() == [True, False, False, True, False]
    assert values[valid].tolist() == [255, 2**64 - 1] and values.dtype == np.uint64
