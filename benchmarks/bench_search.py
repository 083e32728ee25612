"""A whole search: >= 500 candidates over a 100,000-task window, through Ray Tune.

    .venv/bin/python benchmarks/bench_search.py --tasks 100000

Every lever alone and all jointly (Ray Tune + OptunaSearch/TPE, ``--per-trial``
candidates per trial), then bootstrap intervals for the ranked candidates. Baseline in the
same run: the same budget through Ray Tune with Optuna's random sampler. Reported: wall
time, candidates evaluated, best feasible estimated cost per Green PR against the active
policy's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_window import large_window


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=4, help="Tune trials per lever run")
    ap.add_argument("--per-trial", type=int, default=25)
    ap.add_argument("--cache-dir", default="/tmp/autopilot-bench")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)

    import ray

    from experiments.outcomes import fit_outcome_models
    from experiments.search import search_candidates

    fleet, active, window = large_window(args.tasks, Path(args.cache_dir))
    t0 = time.perf_counter()
    models = fit_outcome_models(window)
    fit_s = time.perf_counter() - t0
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    rows = []
    try:
        for sampler in ("tpe",) + (() if args.no_baseline else ("random",)):
            t0 = time.perf_counter()
            result = search_candidates(window, fleet, active, levers="all", candidates=10,
                                       trials=args.trials, per_trial=args.per_trial,
                                       models=models, sampler=sampler, progress=True)
            wall = time.perf_counter() - t0
            best = next((c for c in result if c.feasible), None)
            rows.append((sampler, result.evaluated, wall, result.active_estimate, best))
    finally:
        ray.shutdown()
    print(f"\nWhole search over {window.n:,} tasks (outcome model fit {fit_s:.1f} s, "
          "not included):")
    print(f"{'sampler':28s} {'candidates':>10s} {'wall s':>8s} {'active $/Green':>15s} "
          f"{'best feasible $/Green':>22s} {'delta [90% CI]':>24s} {'risk':>6s}")
    for sampler, n, wall, act, best in rows:
        label = "Ray Tune + Optuna TPE" if sampler == "tpe" else "baseline: Tune + random"
        if best is None:
            print(f"{label:28s} {n:10d} {wall:8.1f} {act.cost_per_green_pr.point:15.5f} "
                  f"{'none feasible':>22s}")
            continue
        d = best.deltas.cost_per_green_pr
        print(f"{label:28s} {n:10d} {wall:8.1f} {act.cost_per_green_pr.point:15.5f} "
              f"{best.estimate.cost_per_green_pr.point:22.5f} "
              f"{f'{100 * d.point:+.1f}% [{100 * d.low:+.1f}, {100 * d.high:+.1f}]':>24s} "
              f"{best.risk:>6s}  ({best.lever})")
    tpe = rows[0]
    print(f"aim >= 500 candidates in < 300 s: "
          f"{'MET' if tpe[1] >= 500 and tpe[2] < 300 else 'NOT MET'} "
          f"({tpe[1]} in {tpe[2]:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
