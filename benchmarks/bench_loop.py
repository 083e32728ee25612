"""The loop over many nights on the real reference fleet, from the naive start, against the
full-information anchor.

    .venv/bin/python benchmarks/bench_loop.py --nights 5            # about 15 min on 2 cores
    .venv/bin/python benchmarks/bench_loop.py --nights 3 --tasks 800 --anchor-tasks 300

What runs: ``controlplane.demo.run_demo`` (the reference fleet on Ray Serve + vLLM, the
nightly and verify flows for real: Prefect, Ray Tune, gates, canaries) for ``--nights``
nights from the naive policy, one day of ``--tasks`` tasks before each night and after the
last. Then, with the fleet still up, the anchor (``experiments.anchor``): every task of a
held-out day (another seed, ``--anchor-tasks``) run once on every tier through the gateway
(gate traffic, response cache bypassed; greedy decoding makes that one attempt the tier's
verdict for the task), and the best static per-family x difficulty escalation with Green PRs
within 2% of the naive start's on that same day.

Prints one row per night (the day it judged, what it proposed / gated / promoted or put on a
canary, the predicted change [interval] against the realised one, exploration spend against
its budget), one row per day (cost per Green PR, Green PRs, FPY, tier mix), the last day as
a ratio to day 1 and to the anchor, and writes a chart (``--chart``). Seeded: the same run
twice from a clean state gives the same table, up to the engines' thread scheduling.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure_anchor(url: str, *, tasks: int, day: str, seed: int = 9_999,
                   concurrency: int = 8, table: Path | None = None) -> dict[str, Any]:
    """Every task of a held-out day on every tier through the gateway; the anchor on it.

    An attempt costs its call and one verification (``WorkloadSpec.verifier_cost_usd``, the
    CI run the harness pays for every attempt it verifies): on this fleet the verification
    costs more than an L call, which decides whether cheap-first tries pay."""
    import numpy as np

    from experiments.anchor import FullInformation, best_static, order_outcomes
    from serving.client import GatewayClient, TaskContext
    from workload.driver import WorkloadSpec, plan_workload
    from workload.tasks import verify

    client = GatewayClient(url)
    tiers = tuple(t for t in ("S", "M", "L"))
    spec = WorkloadSpec(tasks=tasks, seed=seed, day=day)
    items = plan_workload(spec)

    def one(args: tuple[int, int]) -> tuple[int, int, bool, float]:
        i, t = args
        item = items[i]
        ctx = TaskContext(task_id=f"anchor-{tiers[t]}-{item.work_id}", family=item.task.family,
                          team=item.team, repo=item.repo, features=dict(item.task.features),
                          purpose="gate", response_cache="bypass")
        done = client.complete(item.task.prompt, task=ctx, model=tiers[t])
        return i, t, bool(verify(item.task, done.text).passed), float(done.cost_usd)

    passed = np.zeros((len(items), len(tiers)), dtype=bool)
    cost = np.zeros((len(items), len(tiers)))
    t0 = time.perf_counter()
    jobs = [(i, t) for i in range(len(items)) for t in range(len(tiers))]
    with ThreadPoolExecutor(concurrency) as pool:
        for k, (i, t, ok, usd) in enumerate(pool.map(one, jobs), start=1):
            passed[i, t], cost[i, t] = ok, usd
            if k % max(len(jobs) // 5, 1) == 0:
                print(f"      anchor: {k}/{len(jobs)} task x tier runs", flush=True)
    cells = tuple((it.task.family, int(it.task.difficulty)) for it in items)
    if table is not None:
        table.write_text(json.dumps({"tiers": tiers, "cells": cells, "passed": passed.tolist(),
                                     "call_usd": cost.tolist(),
                                     "verifier_usd": spec.verifier_cost_usd}))
    info = FullInformation(tiers, cells, passed, cost + spec.verifier_cost_usd)
    naive_green, naive_spend = order_outcomes(info, (tiers.index("L"),))
    anchor = best_static(info, reference_green=int(naive_green.sum()), margin=0.02)
    out = anchor.as_dict()
    out.update({"verifier_usd_per_attempt": spec.verifier_cost_usd,
                "naive_cost_per_green_pr": float(naive_spend.sum() / max(naive_green.sum(), 1)),
                "naive_green_prs": int(naive_green.sum()), "seconds":
                round(time.perf_counter() - t0, 1), "day": day, "seed": seed})
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def night_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    from store.records import realised_gap

    rows = []
    figures = summary["figures"]
    for n in summary["nights"]:
        pred = n.get("predicted") or {}
        ci = pred.get("cost_per_green_pr_rel_delta_ci")
        look = n.get("verify") or {}
        realised = (look.get("stats") or {}).get("rel_delta")
        explore = pred.get("exploration") or {}
        after = figures[n["night"]]  # the day served after this night
        rows.append({
            "night": n["night"], "judged": n["window"], "baseline": f"v{n['baseline_version']}",
            "change": (f"{n.get('lever')} {n.get('proposal_id')} {n.get('state')}"
                       if n.get("proposal_id") else "none"),
            "gates": n.get("gate_verdict") or "-",
            "canary": "-" if not n.get("canary") else f"{n['canary']['share']:.0%}",
            "predicted": _pct(pred.get("cost_per_green_pr_rel_delta")) + (
                f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""),
            "realised": _pct(realised) + (f" ({look.get('outcome')})" if look else ""),
            # allowing the realised day's own noise, as the calibration record judges it
            "inside": (None if realised is None or not ci else bool(realised_gap(
                pred.get("cost_per_green_pr_rel_delta", realised), ci[0], ci[1], realised,
                *((look.get("stats") or {}).get("rel_delta_ci") or (None, None))) <= 1.0)),
            "exploration_usd_day": explore.get("usd_per_day"),
            "exploration_budget_usd_day": explore.get("budget_usd_per_day"),
            "shadow_spend_next_day": after.get("spend_shadow"),
        })
    return rows


def day_rows(summary: dict[str, Any], anchor: dict[str, Any] | None) -> list[dict[str, Any]]:
    first = summary["figures"][0]
    out = []
    for i, d in enumerate(summary["figures"], start=1):
        cpg = d.get("cost_per_green_pr")
        out.append({
            "day": i, "date": d["day"], "served": d.get("served"), "tasks": d["tasks"],
            "green_prs": d["green_prs"], "fpy": d["fpy"], "cost_per_green_pr": cpg,
            "vs_day1": None if not cpg else cpg / first["cost_per_green_pr"],
            "vs_anchor": (None if not cpg or not anchor else cpg / anchor["cost_per_green_pr"]),
            "tier_mix": {k: round(v, 3) for k, v in d["tier_mix"].items() if v is not None},
        })
    return out


def chart(days: list[dict[str, Any]], anchor: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    xs = [d["day"] for d in days]
    ys = [1e3 * (d["cost_per_green_pr"] or 0) for d in days]
    ax.plot(xs, ys, marker="o", label="measured (the day after each night)")
    if anchor:
        ax.axhline(1e3 * anchor["cost_per_green_pr"], color="green", linestyle="--",
                   label="best static, full information")
        ax.axhline(1e3 * anchor["naive_cost_per_green_pr"], color="grey", linestyle=":",
                   label="every task once on L (anchor day)")
    ax.set_ylim(bottom=0)
    ax.set_xticks(xs)
    ax.set_xlabel("day (night k judges day k)")
    ax.set_ylabel("cost per Green PR (m$)")
    ax.set_title("The loop from the naive start, reference fleet")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{v:.6f}" if isinstance(v, float) and c.startswith("cost") else
                         f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _anchor_only(args: argparse.Namespace) -> int:
    from controlplane.bootstrap import initialise_state
    from controlplane.demo import NAIVE_POLICY, REFERENCE_FLEET
    from controlplane.settings import StateDir
    from serving.fleet import start_fleet

    state = StateDir(args.state or Path(tempfile.mkdtemp(prefix="bench-anchor-")) / "state")
    initialise_state(state, fleet_file=REFERENCE_FLEET / "fleet.yaml", policy_file=NAIVE_POLICY)
    handle = start_fleet(state.fleet_path, store_url=state.store_url(),
                         spans_path=state.spans_dir / "gateway.jsonl")
    try:
        anchor = measure_anchor(handle.url, tasks=args.anchor_tasks,
                                day=(date.today() + timedelta(days=1)).isoformat(),
                                table=args.table)
    finally:
        handle.shutdown()
    print(json.dumps(anchor, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1500, help="tasks per day")
    ap.add_argument("--anchor-tasks", type=int, default=600)
    ap.add_argument("--state", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--chart", type=Path, default=ROOT / "docs" / "img" / "bench_loop.png")
    ap.add_argument("--anchor-only", action="store_true",
                    help="start the fleet, measure only the anchor, stop (no nights)")
    ap.add_argument("--table", type=Path, default=None,
                    help="write the full-information table (task x tier) here as JSON")
    args = ap.parse_args(argv)
    if args.anchor_only:
        return _anchor_only(args)

    from controlplane.demo import run_demo
    from controlplane.settings import StateDir

    state = StateDir(args.state or Path(tempfile.mkdtemp(prefix="bench-loop-")) / "state")
    anchor_day = (date.today() + timedelta(days=1)).isoformat()  # after every driven day
    t0 = time.perf_counter()
    summary = run_demo(state, tasks=args.tasks, nights=args.nights,
                       with_fleet=lambda url: measure_anchor(url, tasks=args.anchor_tasks,
                                                             day=anchor_day, table=args.table))
    anchor = summary.get("with_fleet")
    nights, days = night_rows(summary), day_rows(summary, anchor)
    print()
    print(_table(nights, ["night", "judged", "baseline", "change", "gates", "canary",
                          "predicted", "realised", "inside", "exploration_usd_day",
                          "exploration_budget_usd_day"]))
    print()
    print(_table(days, ["day", "served", "tasks", "green_prs", "fpy", "cost_per_green_pr",
                        "vs_day1", "vs_anchor", "tier_mix"]))
    if anchor:
        print(f"\nanchor (best static, full information, {anchor['tasks']} held-out tasks x 3 "
              f"tiers): ${anchor['cost_per_green_pr']:.6f} per Green PR, Green rate "
              f"{anchor['green_rate']:.3f} (every task once on L, the naive start without "
              "its repeats: "
              f"${anchor['naive_cost_per_green_pr']:.6f}, {anchor['naive_green_prs']} Green "
              f"PRs; single tiers: " + ", ".join(
                  f"{t} ${v['cost_per_green_pr']:.6f}/{v['green_prs']}"
                  for t, v in anchor["single_tier"].items()) + ")")
        print(f"anchor choice: {anchor['choice']}")
    last = days[-1]
    print(f"\nlast day: {last['vs_day1']:.3f}x day 1"
          + ("" if last["vs_anchor"] is None else f", {last['vs_anchor']:.3f}x the anchor")
          + f"; Green PRs {last['green_prs']} vs day 1 {days[0]['green_prs']}; "
            f"{time.perf_counter() - t0:.0f} s")
    chart(days, anchor, args.chart)
    print(f"chart: {args.chart}")
    if args.json:
        args.json.write_text(json.dumps({"nights": nights, "days": days, "anchor": anchor},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
