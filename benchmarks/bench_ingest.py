"""Ingest throughput: flat JSON-lines spans per second, end to end (parse, validate,
dedupe, write Parquet), against a naive per-line ``json.loads`` + pandas baseline.

    .venv/bin/python benchmarks/bench_ingest.py --spans 1000000

Spans are synthetic but shaped like the gateway's (tasks : attempts : calls about
1 : 1.5 : 3, realistic ids and attributes), with a few malformed lines mixed in.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--baseline-spans", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="ingest runs (best is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
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

        best = None
        for run in range(args.repeat):
            root = work / f"tel{run}"
            report = ingest_paths([src], root)
            rate = report.spans_seen / report.seconds
            print(f"  run {run + 1}: {report.seconds:.2f}s  {rate:,.0f} spans/s  "
                  f"stored={report.stored} quarantined={report.quarantined}")
            best = max(best or 0, rate)
            shutil.rmtree(root)
        again_root = work / "again"
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
