"""Metrics throughput: ``compute_metrics`` over a million tasks, against same-run baselines.

    .venv/bin/python benchmarks/bench_metrics.py --tasks 1000000

Frames are generated with numpy/pyarrow (no Python loop per row) with exactly the columns
and dtypes of ``contracts/tables.py`` (``read_table``'s output): about 1.5
attempts and 3 calls per task, 7 days, 8 teams, 20 repos, 6 families, starter fleet prices.

Baselines, timed in the same run on the same frames:
- floor: one plain ``groupby(task_id).sum()`` of the calls' tokens (what any per-task
  aggregation costs at least: one hash pass over the calls' task ids);
- naive: the textbook pandas pipeline for the headline figure only (merge calls to
  attempts to tasks on the string keys, price row-wise via a merged price table, groupby).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts.manifest import load_fleet
from contracts.tables import TABLES
from economics.metrics import compute_metrics

STARTER_FLEET = Path(__file__).resolve().parent.parent / "controlplane" / "starter" / "fleet.yaml"
DAYS = [f"2026-11-{d:02d}" for d in range(14, 21)]


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")


def _pick(rng: np.random.Generator, labels: list[str], n: int,
          p: list[float] | None = None) -> pa.Array:
    codes = rng.choice(len(labels), size=n, p=p)
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()),
                                          pa.array(labels)).cast(pa.string())


def _frame(table: str, columns: dict[str, pa.Array | np.ndarray]) -> pd.DataFrame:
    schema = TABLES[table]
    arrays = {name: columns[name] for name in schema}
    data = pa.table(arrays).to_pandas(types_mapper={pa.string(): pd.StringDtype(),
                                                    pa.bool_(): pd.BooleanDtype()}.get)
    return data.astype(schema)[list(schema)]


def generate(n_tasks: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    task_no = np.arange(n_tasks)
    day_code = rng.integers(0, len(DAYS), n_tasks)
    task_ids = _ids("2026-11-20-t", task_no)  # the ingester's ids are this long
    day = pa.array(np.array(DAYS, dtype=object)[day_code], pa.string())
    start = (1_794_700_800 + day_code * 86_400 + rng.integers(0, 86_000, n_tasks)) * 10**9

    # ~1.5 attempts per task, ~2 calls per attempt.
    n_att = 1 + (rng.random(n_tasks) < 0.4) + (rng.random(n_tasks) < 0.1)
    att_task = np.repeat(task_no, n_att)
    first_of_task = np.repeat(np.cumsum(n_att) - n_att, n_att)
    att_number = np.arange(len(att_task)) - first_of_task + 1
    att_last = att_number == n_att[att_task]
    n_a = len(att_task)
    tier_code = np.minimum(att_number - 1 + (rng.random(n_a) < 0.15), 2)
    tiers = np.array(["S", "M", "L"], dtype=object)
    passed = np.where(att_last, rng.random(n_a) < 0.8, False)
    purpose = rng.choice(3, size=n_a, p=[0.93, 0.05, 0.02])
    n_calls = 1 + rng.poisson(1.0, n_a)
    call_att = np.repeat(np.arange(n_a), n_calls)
    n_c = len(call_att)
    input_tokens = rng.integers(300, 6000, n_c)
    cache = rng.choice(3, size=n_c, p=[0.55, 0.40, 0.05])
    cached = np.where(cache == 1, (input_tokens * rng.uniform(0.3, 0.9, n_c)).astype(np.int64), 0)

    verified = passed[np.cumsum(n_att) - 1]
    reviewed = rng.random(n_tasks) < 0.3
    accepted = rng.random(n_tasks) < 0.95
    outcome_code = np.where(verified & ~(reviewed & ~accepted), 0, np.where(verified, 3, 1))
    outcomes = np.array(["green", "failed", "budget_exceeded", "human_triage"], dtype=object)
    review = pa.array(np.where(reviewed, accepted, False), mask=~reviewed)
    verifier_cost = np.where(rng.random(n_tasks) < 0.1, np.nan, 0.002)

    tasks = _frame("tasks", {
        "span_id": _ids("s", task_no), "trace_id": _ids("tr", task_no), "task_id": task_ids,
        "day": day, "start_ns": start, "end_ns": start + 10**9,
        "family": _pick(rng, ["expr_eval", "list_ops", "bracket_fix", "assert_value",
                              "test_write", "refactor"], n_tasks),
        "team": _pick(rng, [f"team-{i}" for i in range(8)], n_tasks),
        "repo": _pick(rng, [f"repo-{i}" for i in range(20)], n_tasks),
        "agent": _pick(rng, ["agent"], n_tasks),
        "outcome": pa.array(outcomes[outcome_code], pa.string()),
        "verifier_passed": verified, "review_accepted": review,
        "verifier_cost_usd": verifier_cost,
        "policy_version": _pick(rng, ["1"], n_tasks), "features": _pick(rng, ["{}"], n_tasks),
    })
    att_ids = _ids("a", np.arange(n_a))
    att_tier = pa.array(tiers[tier_code], pa.string())
    attempts = _frame("attempts", {
        "span_id": att_ids, "trace_id": task_ids.take(att_task),
        "parent_span_id": _ids("s", att_task), "task_id": task_ids.take(att_task),
        "day": day.take(att_task), "start_ns": start[att_task], "end_ns": start[att_task] + 1,
        "attempt": att_number, "tier": att_tier, "variant": _pick(rng, ["bf16"], n_a),
        "adapter": pa.nulls(n_a, pa.string()), "passed": passed,
        "purpose": pa.array(np.array(["serve", "shadow", "gate"], dtype=object)[purpose],
                            pa.string()),
        "propensity": rng.random(n_a),
        "cost_usd": np.where(rng.random(n_a) < 0.01, 0.01, np.nan),
        "policy_version": _pick(rng, ["1"], n_a),
    })
    call_task = att_task[call_att]
    calls = _frame("calls", {
        "span_id": _ids("c", np.arange(n_c)), "trace_id": task_ids.take(call_task),
        "parent_span_id": att_ids.take(call_att), "task_id": task_ids.take(call_task),
        "day": day.take(call_task), "start_ns": start[call_task], "end_ns": start[call_task] + 1,
        "attempt": att_number[call_att], "model": att_tier.take(call_att),
        "tier": att_tier.take(call_att), "variant": _pick(rng, ["bf16"], n_c),
        "adapter": pa.nulls(n_c, pa.string()),
        "input_tokens": input_tokens, "output_tokens": rng.integers(50, 600, n_c),
        "cached_input_tokens": cached,
        "cache": pa.array(np.array(["miss", "prefix", "response"], dtype=object)[cache],
                          pa.string()),
        "policy_version": _pick(rng, ["1"], n_c),
        "cost_usd": np.full(n_c, np.nan),
    })
    return tasks, attempts, calls


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def floor_groupby(calls: pd.DataFrame) -> pd.Series:
    return calls.groupby("task_id", sort=False)["input_tokens"].sum()


def naive_cost_per_green_pr(tasks, attempts, calls, fleet, by: list[str]) -> pd.DataFrame:
    prices = pd.DataFrame([
        {"tier": t.name, "variant": v.name, "p_in": v.economics.usd_per_input_token,
         "p_out": v.economics.usd_per_output_token}
        for t in fleet.tiers for v in t.variants]).astype({"tier": "string", "variant": "string"})
    disc = fleet.spec.pricing.cached_input_discount
    c = calls.merge(prices, on=["tier", "variant"], how="left")
    cost = ((c.input_tokens - c.cached_input_tokens) * c.p_in
            + c.cached_input_tokens * c.p_in * (1 - disc) + c.output_tokens * c.p_out)
    cost = cost.where(c.cache != "response", fleet.spec.pricing.response_cache_usd_per_call)
    c["cost"] = c.cost_usd.fillna(cost)
    per_attempt = c.groupby(["task_id", "attempt"], as_index=False)["cost"].sum()
    a = attempts.merge(per_attempt, on=["task_id", "attempt"], how="left")
    a["cost"] = a.cost_usd.fillna(a.cost.fillna(0.0))
    per_task = a.groupby("task_id")["cost"].sum()
    t = tasks.set_index("task_id")
    t["spend"] = per_task.reindex(t.index).fillna(0.0) + t.verifier_cost_usd.fillna(0.0)
    t["green"] = ((t.outcome == "green") & t.verifier_passed.fillna(False)
                  & t.review_accepted.fillna(True))
    g = t.groupby(by)[["spend", "green"]].sum() if by else t[["spend", "green"]].sum().to_frame().T
    g["cost_per_green_pr"] = g.spend / g.green
    return g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {platform.python_version()}  pandas {pd.__version__}  numpy {np.__version__}"
          f"  pyarrow {pa.__version__}  cores available: {cores} (cpu_count {os.cpu_count()})")
    fleet = load_fleet(STARTER_FLEET)
    t0 = time.perf_counter()
    tasks, attempts, calls = generate(args.tasks)
    print(f"generated {len(tasks):,} tasks, {len(attempts):,} attempts, {len(calls):,} calls "
          f"in {time.perf_counter() - t0:.1f}s")

    floor, _ = timed(lambda: floor_groupby(calls), args.repeat)
    print(f"floor: calls.groupby(task_id).sum()            {floor:6.2f}s")
    runs = [[], ["team"], ["family"], ["day"], ["team", "day"]]
    results = {}
    for by in runs:
        seconds, frame = timed(lambda by=by: compute_metrics(tasks, attempts, calls, fleet, by=by),
                               args.repeat)
        results[tuple(by)] = frame
        name = ",".join(by) or "whole window"
        print(f"compute_metrics by {name:<16} {len(frame):>4} rows  {seconds:6.2f}s  "
              f"({seconds / floor:4.1f}x floor)")
    if not args.skip_naive:
        naive: dict[tuple[str, ...], pd.DataFrame] = {}
        for by in ([], ["team"]):
            seconds, naive[tuple(by)] = timed(lambda by=by: naive_cost_per_green_pr(
                tasks, attempts, calls, fleet, by), 1)
            name = ",".join(by) or "whole window"
            print(f"naive merge pipeline by {name:<11} (cost/Green PR only)  {seconds:6.2f}s")
        ours = results[()]["cost_per_green_pr"].item()
        theirs = naive[()]["cost_per_green_pr"].item()
        print(f"cost per Green PR: compute_metrics ${ours:.6f}  naive ${theirs:.6f}")
    row = results[()].iloc[0]
    print(f"whole window: tasks {row.tasks:,}  green {row.green_prs:,}  fpy {row.fpy:.3f}  "
          f"spend ${row.spend_total:,.2f}  $/Green PR {row.cost_per_green_pr:.5f}  "
          f"cache hit {row.cache_hit_rate:.2f}  Tier-L {row.tier_L_share:.3f}")


if __name__ == "__main__":
    main()
