"""The telemetry ingester: span files in, three day-partitioned Parquet tables out.

``ingest_paths`` reads and judges span files (flat JSON lines or OTLP/JSON, optionally
gzipped: ``telemetry.parsing``), then stores the good rows once per span id and the
quarantined spans under the warehouse root (``telemetry.warehouse``), and says what it did
in an ``IngestReport``, whose counts add up to what was read. ``TelemetryWarehouse`` is the
three together for one root. What a span may carry and claim is bounded by
``contracts.spans.SpanLimits`` (pass ``limits=`` to change it).

The names this module exported before the split (``Reason``, ``check_span``,
``read_table``, ``list_days``, ...) are still importable from here; their homes are
``telemetry.parsing`` and ``telemetry.warehouse``.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.errors import TransientError
from contracts.spans import SpanLimits
from contracts.tables import TABLES
from telemetry.parsing import Bounds, Normalised, Reason, Rejection, check_span, read_span_file
from telemetry.warehouse import (
    QUARANTINE_DIR,
    SpanIdIndex,
    arrow_schema,
    compact_partition,
    first_occurrences,
    ingest_lock,
    list_days,
    read_table,
    span_ids_u64,
    store_partition,
    write_quarantine,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "QUARANTINE_DIR",
    "IngestReport",
    "Reason",
    "Rejection",
    "SpanLimits",
    "TelemetryWarehouse",
    "arrow_schema",
    "check_span",
    "compact_partition",
    "ingest_paths",
    "list_days",
    "read_table",
]


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``spans_seen`` counts what was read: every span, and every
    line (or document) that could not be read as spans; each ends stored, a duplicate
    (of a span stored before, on any day, or earlier in the batch), ignored (with a
    reason: ``ignored_reasons``) or quarantined (with a reason), so ``spans_seen`` =
    stored + duplicates + ignored + quarantined (``balanced``)."""

    files_read: int
    files_failed: dict[str, str]
    spans_seen: int
    stored: dict[str, int]
    duplicates_skipped: dict[str, int]
    ignored: int
    quarantined: dict[str, int]
    quarantine_file: str | None
    days: tuple[str, ...]
    seconds: float
    ignored_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def stored_total(self) -> int:
        return sum(self.stored.values())

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def duplicates_total(self) -> int:
        return sum(self.duplicates_skipped.values())

    @property
    def accounted_for(self) -> int:
        """stored + duplicates + ignored + quarantined."""
        return self.stored_total + self.duplicates_total + self.ignored + self.quarantined_total

    @property
    def balanced(self) -> bool:
        """Whether everything read is accounted for (nothing lost silently)."""
        return self.accounted_for == self.spans_seen

    def as_dict(self) -> dict[str, Any]:
        return {
            "files_read": self.files_read,
            "files_failed": dict(self.files_failed),
            "spans_seen": self.spans_seen,
            "stored": dict(self.stored),
            "stored_total": self.stored_total,
            "duplicates_skipped": dict(self.duplicates_skipped),
            "ignored": self.ignored,
            "ignored_reasons": dict(self.ignored_reasons),
            "quarantined": dict(self.quarantined),
            "quarantined_total": self.quarantined_total,
            "unaccounted": self.spans_seen - self.accounted_for,
            "quarantine_file": self.quarantine_file,
            "days": list(self.days),
            "seconds": round(self.seconds, 3),
        }


def ingest_paths(paths: Iterable[Path | str], telemetry_root: Path | str, *,
                 max_files_per_day: int = 1, limits: SpanLimits | None = None,
                 now_ns: int | None = None) -> IngestReport:
    """Ingest span files (flat JSON lines or OTLP/JSON, optionally gzipped) into the three
    tables under ``telemetry_root``. Never raises for bad spans or unreadable files: both
    are counted in the report. ``max_files_per_day`` > 1 appends a file per ingest and only
    compacts a partition once it would hold more files than that. ``limits`` bounds what a
    span may carry and claim (default ``SpanLimits()``); ``now_ns`` is the clock a span's
    start may not run ahead of by more than ``limits.max_future_s`` (default: now)."""
    t0 = time.perf_counter()
    root = Path(telemetry_root)
    out = Normalised(bounds=Bounds(limits or SpanLimits(),
                                   time.time_ns() if now_ns is None else now_ns))
    files_read = 0
    failed: dict[str, str] = {}
    source_modes: list[int] = []  # a quarantine file is never wider than its sources
    for path in map(Path, paths):
        with contextlib.suppress(OSError):
            source_modes.append(path.stat().st_mode)
        try:
            read_span_file(path, out)
            files_read += 1
        except (OSError, EOFError, UnicodeError) as exc:
            # Spans judged before the failure are kept; re-ingesting the file dedupes them.
            failed[str(path)] = f"{type(exc).__name__}: {exc}"
    stored = dict.fromkeys(TABLES, 0)
    duplicates = dict.fromkeys(TABLES, 0)
    jobs: list[tuple[str, str, pa.Table]] = []
    new_ids: dict[str, tuple[SpanIdIndex, np.ndarray]] = {}
    with ingest_lock(root):
        try:
            for table_name, parts in out.tables.items():
                batch = (pa.concat_tables(parts) if parts
                         else arrow_schema(table_name).empty_table())
                unique = first_occurrences(batch)
                duplicates[table_name] = batch.num_rows - unique.num_rows
                if unique.num_rows == 0:
                    continue
                # A span id stored before, on any day, is a duplicate.
                index = SpanIdIndex.load(root, table_name)
                ids, _ = span_ids_u64(unique.column("span_id"))  # the rules checked them
                known = index.contains(ids)
                if known.any():
                    duplicates[table_name] += int(known.sum())
                    unique = unique.filter(pa.array(~known))
                    ids = ids[~known]
                new_ids[table_name] = (index, ids)
                day_column = unique.column("day")
                for day in pc.unique(day_column).to_pylist():
                    jobs.append((table_name, day, unique.filter(pc.equal(day_column, day))))
            # Partitions are independent files and Parquet encoding releases the GIL.
            with ThreadPoolExecutor(max_workers=max(1, pa.cpu_count())) as pool:
                results = list(pool.map(
                    lambda job: store_partition(root, *job, max_files_per_day), jobs))
            for (table_name, _, _), write in zip(jobs, results):
                stored[table_name] += write.stored
                index = new_ids[table_name][0]
                index.replace_files(write.removed, [write.written] if write.written else [])
            for index, ids in new_ids.values():
                index.add(ids)
                index.save()
        except OSError as exc:  # a full disk or a lost mount: worth retrying later
            raise TransientError(f"could not write telemetry under {root}: {exc}") from exc
        quarantine_file = (write_quarantine(root, out.quarantine, source_modes=source_modes)
                           if out.quarantine else None)
    touched_days = {day for _, day, _ in jobs}
    return IngestReport(
        files_read=files_read,
        files_failed=failed,
        spans_seen=out.seen,
        stored=stored,
        duplicates_skipped=duplicates,
        ignored=out.ignored,
        quarantined=dict(Counter(q["reason"] for q in out.quarantine)),
        quarantine_file=str(quarantine_file) if quarantine_file else None,
        days=tuple(sorted(touched_days)),
        seconds=time.perf_counter() - t0,
        ignored_reasons=dict(out.ignored_by),
    )


class TelemetryWarehouse:
    """The telemetry tables under one root: ingest into it, read from it, list its days."""

    def __init__(self, root: Path | str, limits: SpanLimits | None = None):
        self.root = Path(root)
        self.limits = limits

    def ingest(self, paths: Iterable[Path | str], *, max_files_per_day: int = 1) -> IngestReport:
        return ingest_paths(paths, self.root, max_files_per_day=max_files_per_day,
                            limits=self.limits)

    def read(self, table: str, days: Sequence[str] | None = None,
             start_day: str | None = None, end_day: str | None = None) -> pd.DataFrame:
        return read_table(self.root, table, days=days, start_day=start_day, end_day=end_day)

    def days(self, table: str | None = None) -> list[str]:
        return list_days(self.root, table)

    def compact(self, table: str | None = None) -> dict[str, int]:
        """Compact every day partition (of one table or all); rows per table afterwards."""
        names = [table] if table else list(TABLES)
        return {name: sum(compact_partition(self.root, name, day)
                          for day in list_days(self.root, name)) for name in names}

    def quarantine_files(self) -> list[Path]:
        return sorted((self.root / QUARANTINE_DIR).glob("quarantine-*.jsonl"))

    def __repr__(self) -> str:
        return f"TelemetryWarehouse({str(self.root)!r})"
