"""Ingest throughput: flat JSON-lines spans per second, end to end (parse, validate,
dedupe, write Parquet), against a naive per-line ``json.loads`` + pandas baseline.

    .venv/bin/python benchmarks/bench_ingest.py --spans 1000000
    .venv/bin/python benchmarks/bench_ingest.py --spans 1000000 --history-days 14

Spans are synthetic but shaped like the gateway's (tasks : attempts : calls about
1 : 1.5 : 3, realistic ids and attributes), with a few malformed lines mixed in.

``--history-days N`` stores N earlier days (each as many spans as the file, other span
ids) in the warehouse before every timed ingest, so the runs pay for deduplicating against
every stored span id (the warehouse's span id index); it also times the naive way to do
that (read every stored span id, then ``is_in``) in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

TIERS = [("small", "qwen2.5-coder-1.5b-instruct"), ("medium", "qwen2.5-coder-7b-instruct"),
         ("large", "qwen2.5-coder-32b-instruct")]
FAMILIES = ["expr_eval", "list_ops", "bracket_fix", "assert_value"]
MALFORMED = [
    b"{not json",
    b'{"name":"llm.call","trace_id":"abc","span_id":"0011223344556677"}',
]


def generate(path: Path, n_spans: int, seed: int = 7, malformed_every: int = 100_000) -> int:
    """Write about ``n_spans`` flat spans; returns the number of lines written."""
    rng = random.Random(seed)
    day0 = 1_795_132_800 * 10**9  # 2026-11-20T00:00:00Z
    lines: list[bytes] = []
    written = 0
    n = 0
    with path.open("wb") as fh:
        while written < n_spans:
            trace = f"{rng.getrandbits(128):032x}"
            task_sid = f"{rng.getrandbits(64):016x}"
            task_id = f"2026-11-20-t{n:07d}"
            t = day0 + n * 80_000_000  # a task every 80 ms: 1M spans stay within a day
            attempts = 1 if rng.random() < 0.55 else 2
            for a in range(1, attempts + 1):
                tier, model = TIERS[min(a - 1 + (rng.random() < 0.2), 2)]
                att_sid = f"{rng.getrandbits(64):016x}"
                a_start = t
                for _ in range(2):
                    inp = rng.randint(400, 6000)
                    cached = int(inp * rng.uniform(0.3, 0.9)) if rng.random() < 0.4 else 0
                    lines.append(orjson.dumps({
                        "name": SPAN_CALL, "trace_id": trace,
                        "span_id": f"{rng.getrandbits(64):016x}", "parent_span_id": att_sid,
                        "start_time_unix_nano": t, "end_time_unix_nano": t + 900_000,
                        "attributes": {
                            Attr.REQUEST_MODEL: model, Attr.INPUT_TOKENS: inp,
                            Attr.OUTPUT_TOKENS: rng.randint(40, 500), Attr.TIER: tier,
                            Attr.VARIANT: "int8", Attr.CACHE: str(
                                CacheStatus.PREFIX if cached else CacheStatus.MISS),
                            Attr.CACHED_INPUT_TOKENS: cached, Attr.TASK_ID: task_id,
                            Attr.ATTEMPT: a, Attr.POLICY_VERSION: "12"}}))
                    t += 1_000_000
                lines.append(orjson.dumps({
                    "name": SPAN_ATTEMPT, "trace_id": trace, "span_id": att_sid,
                    "parent_span_id": task_sid, "start_time_unix_nano": a_start,
                    "end_time_unix_nano": t, "attributes": {
                        Attr.TASK_ID: task_id, Attr.ATTEMPT: a, Attr.TIER: tier,
                        Attr.VARIANT: "int8", Attr.PASSED: a == attempts,
                        Attr.PURPOSE: str(Purpose.SERVE),
                        Attr.PROPENSITY: round(rng.uniform(0.05, 1.0), 4),
                        Attr.POLICY_VERSION: "12"}}))
            lines.append(orjson.dumps({
                "name": SPAN_TASK, "trace_id": trace, "span_id": task_sid,
                "parent_span_id": None, "start_time_unix_nano": day0 + n * 80_000_000,
                "end_time_unix_nano": t, "attributes": {
                    Attr.TASK_ID: task_id, Attr.FAMILY: rng.choice(FAMILIES),
                    Attr.TEAM: rng.choice(["payments", "search", "platform"]),
                    Attr.REPO: rng.choice(["api", "web", "infra", "sdk"]),
                    Attr.AGENT: "swe-agent", Attr.OUTCOME: str(Outcome.GREEN),
                    Attr.VERIFIER_PASSED: True, Attr.VERIFIER_COST_USD: 0.002,
                    Attr.POLICY_VERSION: "12",
                    FEATURE_PREFIX + "difficulty": rng.randint(1, 3),
                    FEATURE_PREFIX + "size": rng.randint(1, 12),
                    FEATURE_PREFIX + "lang": "python"}}))
            n += 1
            if len(lines) >= 50_000:
                written += _flush(fh, lines, written, malformed_every)
        written += _flush(fh, lines, written, malformed_every)
    return written


def _flush(fh, lines: list[bytes], written: int, malformed_every: int) -> int:
    for i in range(len(lines)):
        if (written + i) % malformed_every == malformed_every // 2:
            lines[i] = MALFORMED[(written + i) // malformed_every % len(MALFORMED)]
    fh.write(b"\n".join(lines) + b"\n")
    count = len(lines)
    lines.clear()
    return count


def naive_ingest(path: Path, out: Path, limit: int) -> tuple[int, float]:
    """The obvious implementation: json.loads per line, dict rows, pandas, to_parquet."""
    import pandas as pd

    t0 = time.perf_counter()
    rows: dict[str, list[dict]] = {SPAN_TASK: [], SPAN_ATTEMPT: [], SPAN_CALL: []}
    n = 0
    with path.open() as fh:
        for line in fh:
            if n >= limit:
                break
            n += 1
            try:
                span = json.loads(line)
            except json.JSONDecodeError:
                continue
            if span.get("name") not in rows:
                continue
            row = {k: v for k, v in span.items() if k != "attributes"}
            row.update(span.get("attributes") or {})
            rows[span["name"]].append(row)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in rows.items():
        frame = pd.DataFrame.from_records(records).drop_duplicates("span_id")
        frame.to_parquet(out / f"{name}.parquet")
    return n, time.perf_counter() - t0


def build_history(src: Path, work: Path, days: int) -> Path:
    """``days`` day partitions per table before the file's day, copies of the file's rows
    under random span ids, with the warehouse's span id index built."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from telemetry.ingest import ingest_paths
    from telemetry.warehouse import SpanIdIndex, list_days

    template, history = work / "template", work / "history"
    ingest_paths([src], template)
    [day0] = list_days(template)
    rng = np.random.default_rng(11)
    hex_digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    for table in ("tasks", "attempts", "calls"):
        [part] = (template / table / f"day={day0}").glob("part-*.parquet")
        rows = pq.read_table(part)
        for d in range(1, days + 1):
            day = (datetime.date.fromisoformat(day0) - datetime.timedelta(days=d)).isoformat()
            ids = rng.integers(1, 2**63, rows.num_rows, dtype=np.int64).astype(">u8")
            nibbles = np.stack([ids.view(np.uint8) >> 4, ids.view(np.uint8) & 15], 1)
            text = hex_digits[nibbles.reshape(-1, 8, 2).reshape(-1, 16)].tobytes()
            offsets = np.arange(0, 16 * rows.num_rows + 1, 16, dtype=np.int32)
            span_id = pa.Array.from_buffers(pa.string(), rows.num_rows,
                                            [None, pa.py_buffer(offsets), pa.py_buffer(text)])
            moved = rows.set_column(rows.schema.get_field_index("span_id"), "span_id", span_id)
            moved = moved.set_column(moved.schema.get_field_index("day"), "day",
                                     pa.array([day] * rows.num_rows, pa.string()))
            folder = history / table / f"day={day}"
            folder.mkdir(parents=True)
            pq.write_table(moved, folder / "part-history.parquet", compression="zstd")
        t0 = time.perf_counter()
        SpanIdIndex.load(history, table).save()
        print(f"  {table}: {days} days of {rows.num_rows:,} rows; index built from the files "
              f"in {time.perf_counter() - t0:.2f}s")
    shutil.rmtree(template)
    return history


def naive_cross_day_check(history: Path, src_root: Path) -> float:
    """Seconds to check one ingest's span ids against every stored one by reading them."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    for table in ("tasks", "attempts", "calls"):
        stored = [pq.read_table(f, columns=["span_id"]).column("span_id")
                  for f in sorted((history / table).glob("day=*/part-*.parquet"))]
        new = [pq.read_table(f, columns=["span_id"]).column("span_id")
               for f in sorted((src_root / table).glob("day=*/part-*.parquet"))
               if not (history / table / f.parent.name).exists()]
        for chunked in new:
            pc.is_in(chunked, value_set=pa_concat(stored))
    return time.perf_counter() - t0


def pa_concat(columns):
    import pyarrow as pa

    return pa.chunked_array([c for col in columns for c in col.chunks]).combine_chunks()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--baseline-spans", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="ingest runs (best is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--history-days", type=int, default=0,
                        help="earlier days stored before each timed ingest (cross-day dedupe)")
    args = parser.parse_args()

    import pyarrow

    from telemetry.ingest import ingest_paths

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} usable cores "
          f"(os.cpu_count={os.cpu_count()}, arrow cpu_count={pyarrow.cpu_count()}); "
          f"python {platform.python_version()}, pyarrow {pyarrow.__version__}")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        src = work / "spans.jsonl"
        t0 = time.perf_counter()
        lines = generate(src, args.spans)
        size_mb = src.stat().st_size / 2**20
        print(f"generated {lines:,} lines ({size_mb:,.0f} MiB, "
              f"{src.stat().st_size / lines:.0f} B/span) in {time.perf_counter() - t0:.1f}s")

        history = None
        if args.history_days:
            print(f"history: {args.history_days} earlier days in the warehouse")
            history = build_history(src, work, args.history_days)

        best = None
        for run in range(args.repeat):
            root = work / f"tel{run}"
            if history is not None:
                shutil.copytree(history, root)
            report = ingest_paths([src], root)
            rate = report.spans_seen / report.seconds
            print(f"  run {run + 1}: {report.seconds:.2f}s  {rate:,.0f} spans/s  "
                  f"stored={report.stored} quarantined={report.quarantined}")
            best = max(best or 0, rate)
            if history is not None and run == 0:
                naive = naive_cross_day_check(history, root)
                print(f"  naive cross-day check (read every stored span id, is_in): "
                      f"{naive:.2f}s on top of an ingest")
            shutil.rmtree(root)
        again_root = work / "again"
        if history is not None:
            shutil.copytree(history, again_root)
        ingest_paths([src], again_root)
        again = ingest_paths([src], again_root)
        print(f"  re-ingest of the same file (all duplicates): {again.seconds:.2f}s  "
              f"{again.spans_seen / again.seconds:,.0f} spans/s  "
              f"duplicates={sum(again.duplicates_skipped.values()):,}")

        n, seconds = naive_ingest(src, work / "naive", args.baseline_spans)
        naive_rate = n / seconds
        print(f"baseline (json.loads per line + pandas + to_parquet, first {n:,} lines): "
              f"{seconds:.2f}s  {naive_rate:,.0f} spans/s")
        print(f"RESULT ingest best {best:,.0f} spans/s on {cores} cores; "
              f"{best / naive_rate:.1f}x the naive baseline")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
