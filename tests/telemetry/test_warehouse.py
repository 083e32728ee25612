"""The warehouse: partitions, compaction, day windows and the read-back contract."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pandas as pd
import pytest
from telemetry_testkit import DAY, hex_id, mutate, task_span, workload, write_flat

from contracts.errors import PermanentError
from contracts.tables import TABLES
from telemetry.ingest import TelemetryWarehouse, ingest_paths
from telemetry.warehouse import list_days, read_table


# ------------------------------------------------------------------ partitions and files
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
    assert attempts["parent_span_id"].tolist() == [hex_id(0, 16), hex_id(10, 16), hex_id(20, 16)]
    assert read_table(root, "tasks")["review_accepted"].isna().all()


def test_read_table_rejects_unknown_table_and_bad_day(tmp_path):
    with pytest.raises(PermanentError):
        read_table(tmp_path, "spans")
    with pytest.raises(PermanentError):
        read_table(tmp_path, "tasks", start_day="20-11-2026")
