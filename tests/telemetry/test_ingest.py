"""The ingester end to end: what the report counts, and storing each span once."""

from __future__ import annotations

from telemetry_testkit import DAY, call_span, frames, mutate, workload, write_flat

from telemetry import ingest, parsing, warehouse
from telemetry.ingest import ingest_paths


# ----------------------------------------------------------------------------- the report
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


# --------------------------------------------------------------------- the module's front
def test_the_names_ingest_exported_before_the_split_still_import_from_it():
    for name in ingest.__all__:
        value = getattr(ingest, name)
        home = parsing if hasattr(parsing, name) else warehouse if hasattr(
            warehouse, name) else ingest
        assert getattr(home, name) is value, name
    assert {"Reason", "check_span", "read_table", "list_days", "compact_partition",
            "TelemetryWarehouse", "IngestReport", "ingest_paths"} <= set(ingest.__all__)
