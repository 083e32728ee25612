"""Replay throughput: task x candidate evaluations per second on this machine.

    .venv/bin/python benchmarks/bench_replay.py --tasks 100000 --candidates 60

Candidates are sampled from the routing and guardrails levers jointly. The baseline in the
same run is the obvious per-task loop (``policies.routing.tier_plan`` and the outcome
model's ``predict_proba`` for every task of every candidate) on a slice of the window.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_window import large_window


def naive_replay(policy, window, models, rows) -> float:
    """Per task: the plan through policies.routing, P(pass) per attempt through sklearn."""
    from policies.routing import first_tier_probabilities, tier_plan

    total_green = 0.0
    for i in rows:
        fam = window.families[window.family_code[i]]
        feats = window.raw_features[i]
        for start, p_start in first_tier_probabilities(policy, fam, feats).items():
            if p_start == 0:
                continue
            plan = tier_plan(policy, fam, feats, start=start)
            codes = np.array([window.combo_index(a.tier, a.variant, a.adapter) for a in plan])
            hist = np.zeros((len(plan), models.n_hist))
            for j in range(1, len(plan)):
                hist[j] = hist[j - 1]
                hist[j, window.combos[codes[j - 1]].rank] += 1
            p = models.predict(np.repeat(window.model_features[i:i + 1], len(plan), axis=0),
                               codes, hist, np.arange(1, len(plan) + 1, dtype=float))
            reach = np.concatenate([[1.0], np.cumprod(1 - p)[:-1]])
            total_green += p_start * float((reach * p).sum())
    return total_green


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--candidates", type=int, default=60)
    ap.add_argument("--naive-tasks", type=int, default=1000)
    ap.add_argument("--cache-dir", default="/tmp/autopilot-bench")
    args = ap.parse_args(argv)

    from experiments.outcomes import fit_outcome_models
    from experiments.replay import ReplayContext, replay_policy
    from experiments.search import lever_context
    from policies.levers import apply_joint, joint_space

    fleet, active, window = large_window(args.tasks, Path(args.cache_dir))
    t0 = time.perf_counter()
    models = fit_outcome_models(window)
    ctx = ReplayContext(window, models)
    print(f"outcome model fitted on {models.n_train} attempts + context in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    lctx = lever_context(window, fleet)
    names = ("routing", "guardrails")
    space = joint_space(names, active, lctx)
    rng = random.Random(0)
    policies = [apply_joint(names, active, {k: p.sample(rng) for k, p in space.items()}, lctx)
                for _ in range(args.candidates)]
    replay_policy(policies[0], ctx)  # warm
    t0 = time.perf_counter()
    for p in policies:
        replay_policy(p, ctx)
    vec_s = time.perf_counter() - t0
    vec_rate = window.n * len(policies) / vec_s

    rows = np.arange(min(args.naive_tasks, window.n))
    t0 = time.perf_counter()
    for p in policies[:3]:
        naive_replay(p, window, models, rows)
    naive_s = time.perf_counter() - t0
    naive_rate = len(rows) * 3 / naive_s
    print("\nReplay throughput (task x candidate evaluations per second, this machine):")
    print(f"{'method':52s} {'evals':>12s} {'seconds':>8s} {'evals/s':>12s}")
    print(f"{'vectorised replay (DR, guardrails, exploration)':52s} "
          f"{window.n * len(policies):12,d} {vec_s:8.2f} {vec_rate:12,.0f}")
    print(f"{'baseline: per-task loop (routing + predict_proba)':52s} "
          f"{len(rows) * 3:12,d} {naive_s:8.2f} {naive_rate:12,.0f}")
    print(f"speed-up {vec_rate / naive_rate:,.0f}x; aim >= 1,000,000/s: "
          f"{'MET' if vec_rate >= 1e6 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
