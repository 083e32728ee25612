"""The telemetry warehouse on disk: three day-partitioned Parquet tables and the quarantine.

Storage: ``<root>/<table>/day=YYYY-MM-DD/part-<uuid>.parquet``. Every file is written under a
temporary name and renamed into place, so readers never see half a file. A span is stored
once per table (its ``span_id``), whatever day it claims: duplicates inside a batch are
dropped first, then the rest are checked against ``<root>/<table>/_span_ids.idx``, a
compact index of every span id the table holds (sorted 64-bit integers, with the part
files they were read from; ``SpanIdIndex``). The index is rebuilt from the part files
whenever it does not match them (lost, a crash between a write and its update, a day
deleted by an operator), so it is never trusted beyond the files. By default a touched
partition is rewritten as a single file (compaction on write). Malformed spans go to
``<root>/quarantine/*.jsonl`` with a stable reason code.

``telemetry.ingest`` fills it (``ingest_paths``); ``read_table`` and ``list_days`` read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
    "QUARANTINE_MODE",
    "PartitionWrite",
    "SpanIdIndex",
    "arrow_schema",
    "compact_partition",
    "first_occurrences",
    "ingest_lock",
    "list_days",
    "quarantine_mode",
    "read_table",
    "span_ids_u64",
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


@dataclass(frozen=True)
class PartitionWrite:
    """What ``store_partition`` did: rows stored, the file written, the files it replaced."""

    stored: int
    written: Path | None
    removed: tuple[Path, ...]


def store_partition(root: Path, table_name: str, day: str, new: pa.Table,
                    max_files_per_day: int) -> PartitionWrite:
    """Add ``new`` rows to one day partition. They must be new to the whole table (checked
    against ``SpanIdIndex`` by the caller, under ``ingest_lock``), so the partition's
    stored ids are not read again; compaction still keeps a span id once."""
    schema = arrow_schema(table_name)
    partition = _partition_dir(root, table_name, day)
    existing = _part_files(partition)
    if new.num_rows == 0 and len(existing) <= max_files_per_day:
        return PartitionWrite(0, None, ())
    if len(existing) + 1 > max_files_per_day:
        merged = pa.concat_tables([_read_files(existing, schema), new])
        written = _write_atomic(first_occurrences(merged), partition)
        # Only files that were read are removed: a concurrent writer's file survives.
        for old in existing:
            old.unlink(missing_ok=True)
        _fsync_dir(partition)
        return PartitionWrite(new.num_rows, written, tuple(existing))
    return PartitionWrite(new.num_rows, _write_atomic(new, partition), ())


def compact_partition(root: Path, table: str, day: str) -> int:
    """Rewrite one day partition as a single file without duplicate span ids; rows kept."""
    schema = arrow_schema(table)
    root = Path(root)
    partition = _partition_dir(root, table, day)
    with ingest_lock(root):
        existing = _part_files(partition)
        if not existing:
            return 0
        merged = first_occurrences(_read_files(existing, schema))
        if len(existing) > 1:
            index = SpanIdIndex.load(root, table)  # before the files change under it
            written = _write_atomic(merged, partition)
            for old in existing:
                old.unlink(missing_ok=True)
            index.replace_files(existing, [written])  # the same ids, other files
            index.save()
        return merged.num_rows


# ----------------------------------------------------------------------- span id index
INDEX_FILE = "_span_ids.idx"
_INDEX_MAGIC = b"L5-SPAN-IDS 1\n"
_HEX_VALUE = np.full(256, 255, np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)


def span_ids_u64(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Span ids (16 lower-case hex digits, as stored) as 64-bit integers, and the mask of
    the ids that are such (the others' integers are 0)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    n = len(ids)
    values = np.zeros(n, np.uint64)
    if n == 0:
        return values, np.zeros(0, bool)
    ids = ids.cast(pa.binary())
    shaped = pc.fill_null(pc.equal(pc.binary_length(ids), 16), False).to_numpy(
        zero_copy_only=False)
    rows = np.flatnonzero(shaped)
    if len(rows) == 0:
        return values, shaped
    picked = ids.take(pa.array(rows)) if len(rows) < n else ids
    # equal lengths: the values sit back to back, 16 bytes each
    offsets = np.frombuffer(picked.buffers()[1], np.int32, count=len(picked) + 1,
                            offset=picked.offset * 4)
    data = np.frombuffer(picked.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    nibbles = _HEX_VALUE[data.reshape(-1, 16)]
    hexadecimal = (nibbles != 255).all(axis=1)
    packed = ((nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 15)).astype(np.uint8)
    values[rows] = packed.view(">u8").ravel().astype(np.uint64)
    valid = np.zeros(n, bool)
    valid[rows] = hexadecimal
    values[~valid] = 0
    return values, valid


def _table_files(root: Path, table: str) -> dict[str, int]:
    """Every part file of a table (path relative to the table's folder) and its size."""
    folder = root / table
    files = {}
    for path in folder.glob("day=*/part-*.parquet"):
        with contextlib.suppress(OSError):  # removed meanwhile by nobody holding the lock
            files[str(path.relative_to(folder))] = path.stat().st_size
    return files


def _ids_of_files(root: Path, table: str, files: Iterable[str]) -> np.ndarray:
    schema = arrow_schema(table)
    paths = [root / table / f for f in files]
    if not paths:
        return np.zeros(0, np.uint64)
    values, valid = span_ids_u64(_read_files(paths, schema, ["span_id"]).column("span_id"))
    return np.unique(values[valid])


class SpanIdIndex:
    """The span ids one table holds, as sorted unique 64-bit integers (8 bytes an id), and
    the part files (with their sizes) they were read from. ``load`` checks it against the
    files on disk: ids of files it does not know are added, and a known file that is gone
    or changed makes it rebuild from the files. Use under ``ingest_lock``."""

    def __init__(self, root: Path, table: str, ids: np.ndarray, files: dict[str, int],
                 *, changed: bool = True):
        self.root, self.table = Path(root), table
        self.ids = ids
        self.files = files
        self.changed = changed  # since it was read: ``save`` writes only then

    @property
    def path(self) -> Path:
        return self.root / self.table / INDEX_FILE

    @classmethod
    def load(cls, root: Path | str, table: str) -> SpanIdIndex:
        root = Path(root)
        on_disk = _table_files(root, table)
        stored = cls._read(root / table / INDEX_FILE)
        if stored is None or any(on_disk.get(f) != size for f, size in stored[1].items()):
            return cls(root, table, _ids_of_files(root, table, on_disk), on_disk)
        ids, files = stored
        index = cls(root, table, ids, files, changed=False)
        unknown = [f for f in on_disk if f not in files]
        if unknown:  # written by an ingest that stopped before updating the index
            fresh = _ids_of_files(root, table, unknown)
            index.add(fresh[~index.contains(fresh)])
            index.files.update({f: on_disk[f] for f in unknown})
            index.changed = True
        return index

    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, dict[str, int]] | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if not data.startswith(_INDEX_MAGIC):
            return None
        end = data.find(b"\n", len(_INDEX_MAGIC))
        try:
            header = orjson.loads(data[len(_INDEX_MAGIC):end])
            count, files = int(header["count"]), dict(header["files"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        body = data[end + 1:]
        if end < 0 or len(body) != 8 * count:
            return None
        return np.frombuffer(body, "<u8").astype(np.uint64), files

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the table holds already."""
        if len(self.ids) == 0 or len(ids) == 0:
            return np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self.ids[pos] == ids

    def add(self, ids: np.ndarray) -> None:
        """Add ids the index does not hold (unique among themselves)."""
        if len(ids):
            ids = np.sort(ids.astype(np.uint64))
            self.ids = np.insert(self.ids, np.searchsorted(self.ids, ids), ids)
            self.changed = True

    def replace_files(self, removed: Iterable[Path], added: Iterable[Path]) -> None:
        folder = self.root / self.table
        for path in removed:
            self.files.pop(str(Path(path).relative_to(folder)), None)
            self.changed = True
        for path in added:
            self.files[str(Path(path).relative_to(folder))] = Path(path).stat().st_size
            self.changed = True

    def save(self) -> None:
        """Write the index (when it changed) under a temporary name, then rename it."""
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{INDEX_FILE}.{uuid.uuid4().hex[:8]}.tmp")
        header = orjson.dumps({"count": len(self.ids), "files": self.files})
        try:
            with tmp.open("wb") as fh:
                fh.write(_INDEX_MAGIC + header + b"\n")
                fh.write(self.ids.astype("<u8").tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.changed = False


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


# A quarantine file holds the source lines verbatim: readable by the owner only, and never
# by more than the span files it came from could be (issue 14, defect 11).
QUARANTINE_MODE = 0o600


def quarantine_mode(source_modes: Iterable[int] = ()) -> int:
    """The permission bits of a new quarantine file: ``QUARANTINE_MODE`` narrowed by every
    source file's (their intersection: a bit is set only where each source had it)."""
    mode = QUARANTINE_MODE
    for source in source_modes:
        mode &= source
    return mode & 0o777


def write_quarantine(root: Path, records: list[dict[str, Any]], *,
                     source_modes: Iterable[int] = ()) -> Path:
    """Write quarantine records as one new JSON-lines file (renamed into place); its path.

    The file is created with ``quarantine_mode(source_modes)`` (0600 at most, never wider
    than any source file's), so the umask can only narrow it further."""
    folder = root / QUARANTINE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    final = folder / f"quarantine-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = folder / f".{final.name}.tmp"
    mode = quarantine_mode(source_modes)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 mode)
    with os.fdopen(fd, "wb") as fh:
        for record in records:
            fh.write(_quarantine_line(record) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def _quarantine_line(record: dict[str, Any]) -> bytes:
    """One record as JSON; an original the encoder refuses is kept as (bounded) text."""
    try:
        return orjson.dumps(record, default=str)
    except (TypeError, orjson.JSONEncodeError):
        try:
            text = repr(record.get("original"))
        except RecursionError:
            text = "<not kept: nested too deep>"
        kept = text[:4096] + (f"... ({len(text):,} characters)" if len(text) > 4096 else "")
        return orjson.dumps({**record, "original": kept}, default=str)


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
