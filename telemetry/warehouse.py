"""The telemetry warehouse on disk: three day-partitioned Parquet tables and the quarantine.

Storage: ``<root>/<table>/day=YYYY-MM-DD/part-<uuid>.parquet``. Every file is written under a
temporary name and renamed into place, so readers never see half a file. A span is stored
once per table (its ``span_id``): duplicates inside a batch are dropped first, then the rest
are checked against the span ids already stored in the touched day partitions only. By
default a touched partition is rewritten as a single file (compaction on write).
Malformed spans go to ``<root>/quarantine/*.jsonl`` with a stable reason code.

``telemetry.ingest`` fills it (``ingest_paths``); ``read_table`` and ``list_days`` read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.errors import PermanentError
from contracts.tables import TABLES

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "QUARANTINE_DIR",
    "arrow_schema",
    "compact_partition",
    "first_occurrences",
    "ingest_lock",
    "list_days",
    "read_table",
    "store_partition",
    "write_quarantine",
]

QUARANTINE_DIR = "quarantine"
# zstd: about half the size of lz4 files for a few percent of ingest time (measured).
PARQUET_COMPRESSION = "zstd"
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ------------------------------------------------------------------------------ schemas
_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                "boolean": pa.bool_()}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a stored table, derived from ``tables.TABLES``."""
    try:
        columns = TABLES[table]
    except KeyError:
        raise PermanentError(f"unknown telemetry table {table!r}; use one of "
                             f"{', '.join(TABLES)}") from None
    return pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()])


# ------------------------------------------------------------------------------ storage
def _partition_dir(root: Path, table: str, day: str) -> Path:
    return root / table / f"day={day}"


def _part_files(partition: Path) -> list[Path]:
    return sorted(partition.glob("part-*.parquet"))


def _write_atomic(table: pa.Table, partition: Path) -> Path:
    """Write under a hidden temporary name, fsync, then rename into place."""
    partition.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = partition / f".{name}.tmp"
    try:
        pq.write_table(table, tmp, compression=PARQUET_COMPRESSION)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        final = partition / name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(partition)
    return final


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_files(files: Sequence[Path], schema: pa.Schema,
                columns: Sequence[str] | None = None) -> pa.Table:
    target = pa.schema([schema.field(c) for c in columns]) if columns else schema
    if not files:
        return target.empty_table()
    tables = [pq.read_table(f, columns=target.names).cast(target) for f in files]
    return pa.concat_tables(tables)


def first_occurrences(table: pa.Table) -> pa.Table:
    """Rows whose span_id has not appeared earlier in the table."""
    if table.num_rows == 0:
        return table
    ids = table.column("span_id")
    if len(pc.unique(ids)) == table.num_rows:  # the common case; unique() is the cheap test
        return table
    indexed = pa.table({"span_id": ids, "i": pa.array(np.arange(table.num_rows))})
    first = indexed.group_by("span_id", use_threads=False).aggregate([("i", "min")])
    keep = np.sort(first.column("i_min").to_numpy())
    return table.take(pa.array(keep))


def store_partition(root: Path, table_name: str, day: str, new: pa.Table,
                    max_files_per_day: int) -> tuple[int, int]:
    """Add ``new`` rows (already unique) to one day partition; (stored, duplicates)."""
    schema = arrow_schema(table_name)
    partition = _partition_dir(root, table_name, day)
    existing = _part_files(partition)
    if existing:
        stored_ids = _read_files(existing, schema, ["span_id"]).column("span_id")
        fresh = pc.invert(pc.is_in(new.column("span_id"), value_set=stored_ids))
        before = new.num_rows
        new = new.filter(fresh)
        duplicates = before - new.num_rows
    else:
        duplicates = 0
    if new.num_rows == 0 and len(existing) <= max_files_per_day:
        return 0, duplicates
    if len(existing) + 1 > max_files_per_day:
        merged = pa.concat_tables([_read_files(existing, schema), new])
        _write_atomic(first_occurrences(merged), partition)
        # Only files that were read are removed: a concurrent writer's file survives.
        for old in existing:
            old.unlink(missing_ok=True)
        _fsync_dir(partition)
    else:
        _write_atomic(new, partition)
    return new.num_rows, duplicates


def compact_partition(root: Path, table: str, day: str) -> int:
    """Rewrite one day partition as a single file without duplicate span ids; rows kept."""
    schema = arrow_schema(table)
    partition = _partition_dir(Path(root), table, day)
    with ingest_lock(Path(root)):
        existing = _part_files(partition)
        if not existing:
            return 0
        merged = first_occurrences(_read_files(existing, schema))
        if len(existing) > 1:
            _write_atomic(merged, partition)
            for old in existing:
                old.unlink(missing_ok=True)
        return merged.num_rows


@contextlib.contextmanager
def ingest_lock(root: Path) -> Iterator[None]:
    """One writer per telemetry root at a time (an advisory lock on a file beside the data)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".ingest.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_quarantine(root: Path, records: list[dict[str, Any]]) -> Path:
    """Write quarantine records as one new JSON-lines file (renamed into place); its path."""
    folder = root / QUARANTINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    final = folder / f"quarantine-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = folder / f".{final.name}.tmp"
    with tmp.open("wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record, default=str) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


# ---------------------------------------------------------------------------- reading
def list_days(telemetry_root: Path | str, table: str | None = None) -> list[str]:
    """The days with stored data (of one table, or of any), sorted."""
    root = Path(telemetry_root)
    names = [table] if table else list(TABLES)
    for name in names:
        arrow_schema(name)  # rejects an unknown table
    days = {p.name[4:] for name in names for p in (root / name).glob("day=*")
            if _DAY_RE.match(p.name[4:]) and _part_files(p)}
    return sorted(days)


def _selected_days(available: list[str], days: Sequence[str] | None, start_day: str | None,
                   end_day: str | None) -> list[str]:
    for d in [*(days or []), start_day, end_day]:
        if d is not None and not _DAY_RE.match(str(d)):
            raise PermanentError(f"day {d!r} is not YYYY-MM-DD")
    chosen = [d for d in available if days is None or d in set(days)]
    if start_day:
        chosen = [d for d in chosen if d >= start_day]
    if end_day:
        chosen = [d for d in chosen if d <= end_day]
    return chosen


def read_table(telemetry_root: Path | str, table: str, days: Sequence[str] | None = None,
               start_day: str | None = None, end_day: str | None = None) -> pd.DataFrame:
    """One table as a DataFrame with exactly the declared columns and dtypes; ``days`` and
    the inclusive ``start_day``/``end_day`` window select partitions."""
    import pandas as pd

    schema = arrow_schema(table)
    root = Path(telemetry_root)
    selected = _selected_days(list_days(root, table), days, start_day, end_day)
    parts: list[pa.Table] = []
    for day in selected:
        files = _part_files(_partition_dir(root, table, day))
        data = _read_files(files, schema)
        # More than one file only after a crash between a compaction's rename and its
        # clean-up (or with max_files_per_day > 1): a span id is still read once.
        parts.append(first_occurrences(data) if len(files) > 1 else data)
    data = pa.concat_tables(parts) if parts else schema.empty_table()
    dtypes = {name: pd.api.types.pandas_dtype(d) for name, d in TABLES[table].items()}
    mapping = {pa.string(): dtypes.get("span_id"), pa.bool_(): pd.BooleanDtype()}
    frame = data.to_pandas(types_mapper=mapping.get)
    return frame.astype(dtypes)[list(TABLES[table])]
