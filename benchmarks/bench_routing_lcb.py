"""Routing on LiveCodeBench per-problem outcomes, and the estimator's honesty.

    .venv/bin/python benchmarks/bench_routing_lcb.py --data /work/shared/data

Tiers: DeepSeek-Coder 1.3b / 6.7b / 33b instruct (see benchmarks/lcb_sim.py for prices).
Half the problems train, half are held out. The logged window: the FrugalGPT-style cascade
S -> M -> L with 10% exploration, ``--repeats`` tasks per training problem, partial
feedback. The search (Ray Tune + Optuna, routing and guardrail levers and jointly) picks a
policy from that window alone; every policy is then scored exactly on the held-out
problems with full information. Baselines in the same run: each single tier, a
RouteLLM-style threshold router (a logistic win-probability model for S, threshold tuned
on the training problems), the cascade, and the oracle.

Honesty: over ``--seeds`` fresh logs and splits, how often the estimator's 90% interval
(problem-clustered bootstrap) covers (a) the policy's true value on the logged problems
(the counterfactual the telemetry could not show) and (b) its true value on the held-out
problems.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lcb_sim import (
    LADDER,
    exact_value,
    features_of,
    ladder_fleet,
    load_problems,
    oracle_value,
    simulate_log,
)

POLICY = """
apiVersion: autopilot/v1
kind: Policy
metadata: {{version: 1, author: bench, created: 2026-11-01T00:00:00Z}}
spec:
  routing: {{router: fixed, escalation: {esc}, max_attempts: {max_attempts},
            exploration_rate: {explore}}}
"""


def policy(esc, max_attempts, explore=0.0):
    from policies.policy import load_policy

    return load_policy(POLICY.format(esc="[" + ", ".join(esc) + "]",
                                     max_attempts=max_attempts, explore=explore))


def routellm_policy(train, fleet):
    """RouteLLM-style: P(S wins | features) by logistic regression; below a threshold go
    to L. The threshold is the one with the best cost per Green PR on the training
    problems (full information: generous to the baseline)."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([[f["difficulty"], f["leetcode"], f["atcoder"]]
                  for f in (features_of(r) for _, r in train.iterrows())], dtype=float)
    rng = np.random.default_rng(0)
    y = rng.random(len(train)) < train["p_S"].to_numpy()
    lr = LogisticRegression().fit(x, y)
    w = lr.coef_[0]
    best = None
    for th in np.linspace(-4, 2, 25):
        # score = -(logit of S winning); start at L when the score >= th
        p = policy(["S", "L"], 1).evolve(author="bench", routing={
            "router": "score", "escalation": ["S", "L"], "max_attempts": 1,
            "weights": {"difficulty": -float(w[0]), "leetcode": -float(w[1]),
                        "atcoder": -float(w[2])},
            "bias": -float(lr.intercept_[0]), "thresholds": [float(th)]})
        v = exact_value(p, fleet, train)
        if best is None or v.cost_per_green < best[0]:
            best = (v.cost_per_green, p)
    return best[1]


def clustered_weights(clusters: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_c = int(clusters.max()) + 1
    return rng.poisson(1.0, size=(replicates, n_c)).astype(np.float32)[:, clusters]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--repeats", type=int, default=10, help="logged tasks per train problem")
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the honesty check")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--per-trial", type=int, default=40)
    ap.add_argument("--executor", default="tune", choices=["tune", "inline"])
    args = ap.parse_args(argv)

    from experiments.estimator import estimate
    from experiments.outcomes import fit_outcome_models
    from experiments.replay import ReplayContext
    from experiments.search import search_candidates
    from experiments.window import build_window

    t0 = time.perf_counter()
    fleet = ladder_fleet()
    problems = load_problems(args.data)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(problems))
    train, test = problems.iloc[order[: len(order) // 2]], problems.iloc[order[len(order) // 2:]]
    logging = policy(["S", "M", "L"], 3, explore=0.1)
    frames = simulate_log(logging, fleet, train, args.repeats, seed=0)
    window = build_window(*frames, fleet)
    print(f"{len(problems)} problems ({len(train)} train / {len(test)} held out); logged "
          f"window: {window.n} tasks, {len(frames[1])} attempts; prices per attempt: "
          + ", ".join(f"{t} ${fleet.economics(t).usd_per_output_token * 400 + fleet.economics(t).usd_per_input_token * 600:.5f}"
                      for t, _, _ in LADDER), flush=True)

    result = search_candidates(window, fleet, logging,
                               levers=("routing", "guardrails", "all"), candidates=8,
                               trials=args.trials, per_trial=args.per_trial,
                               executor=args.executor, progress=True)
    # What the product does: the best feasible candidate, else keep the active policy.
    chosen = next((c for c in result if c.feasible), None)
    print(f"search: {result.evaluated} candidates evaluated in {result.seconds:.1f} s; "
          f"ranked (estimates on the logged window):", flush=True)
    for c in result:
        s = c.summary()
        print(f"  {s['lever']:11s} $/Green {s['cost_per_green_pr']:.6f} d$/Green "
              f"{s['d_cost_per_green']:24s} dGreen {s['d_green']:24s} support "
              f"{s['support']:.3f} feasible={s['feasible']} risk={s['risk']}")

    oracle = oracle_value(fleet, test)
    rows = []
    for name, p in [("single S (1.3b)", policy(["S"], 1)), ("single M (6.7b)", policy(["M"], 1)),
                    ("single L (33b)", policy(["L"], 1)),
                    ("RouteLLM-style threshold S|L", routellm_policy(train, fleet)),
                    ("FrugalGPT-style cascade S>M>L", policy(["S", "M", "L"], 3)),
                    ("logging policy (cascade + 10% explore)", logging),
                    ("autopilot search pick", chosen.policy if chosen else None)]:
        if p is None:
            continue
        v = exact_value(p, fleet, test)
        rows.append((name, v.green_rate, v.fpy, v.cost_per_green))
    rows.append(("oracle (cheapest passing tier)", oracle.green_rate, oracle.fpy,
                 oracle.cost_per_green))
    best_single = max(r[1] for r in rows[:3])
    print("\nHeld-out problems, exact expected values (full information):")
    print(f"{'policy':42s} {'green rate':>10s} {'FPY':>7s} {'$/Green PR':>11s} {'x oracle':>9s}")
    for name, g, f, c in rows:
        print(f"{name:42s} {g:10.3f} {f:7.3f} {c:11.5f} {c / oracle.cost_per_green:9.2f}")
    if chosen is None:
        print("\nno feasible candidate: the active (logging) policy stays")
    else:
        v = exact_value(chosen.policy, fleet, test)
        print(f"\npick: {chosen.lever}; estimate on the logged window: $/Green "
              f"{chosen.estimate.cost_per_green_pr}, support {chosen.estimate.support:.3f}")
        print("pick routing: " + chosen.policy.spec.routing.model_dump_json(
            exclude_defaults=True) + " guardrails: "
              + chosen.policy.spec.guardrails.model_dump_json(exclude_defaults=True))
        print(f"aim green >= best single tier ({best_single:.3f}): "
              f"{'MET' if v.green_rate >= best_single else 'NOT MET'} ({v.green_rate:.3f}); "
              f"aim $/Green <= 1.5x oracle: "
              f"{'MET' if v.cost_per_green <= 1.5 * oracle.cost_per_green else 'NOT MET'} "
              f"({v.cost_per_green / oracle.cost_per_green:.2f}x)")

    # ------------------------------------------------------------------ honesty
    judged = [("cascade S>M>L", policy(["S", "M", "L"], 3)), ("start M, M>L", policy(["M", "L"], 2)),
              ("single L", policy(["L"], 1))]
    if chosen is not None:
        judged.append(("search pick", chosen.policy))
    cover_in = {n: [0, 0] for n, _ in judged}
    cover_out = {n: [0, 0] for n, _ in judged}
    widths = {n: [] for n, _ in judged}
    for seed in range(1, args.seeds + 1):
        r = np.random.default_rng(seed)
        o = r.permutation(len(problems))
        tr, te = problems.iloc[o[: len(o) // 2]], problems.iloc[o[len(o) // 2:]]
        fr = simulate_log(logging, fleet, tr, args.repeats, seed=seed)
        w = build_window(*fr, fleet)
        ctx = ReplayContext(w, fit_outcome_models(w))
        cl = fr[0]["repo"].astype("category").cat.codes.to_numpy()
        W = clustered_weights(cl, 200, seed)
        for name, p in judged:
            e = estimate(p, w, context=ctx, weights=W, level=0.9)
            tin, tout = exact_value(p, fleet, tr), exact_value(p, fleet, te)
            for cover, truth in ((cover_in, tin), (cover_out, tout)):
                cover[name][0] += e.cost_per_green_pr.covers(truth.cost_per_green)
                cover[name][1] += e.green_prs.covers(truth.green_rate * w.n)
            widths[name].append(e.cost_per_green_pr.width / e.cost_per_green_pr.point)
        print(f"  honesty seed {seed}/{args.seeds} done", flush=True)
    if args.seeds == 0:
        return 0
    print(f"\nEstimator honesty over {args.seeds} logs (90% intervals, problem-clustered "
          "bootstrap):")
    print(f"{'policy':18s} {'$/Green covers: logged problems':>32s} {'held-out':>10s} "
          f"{'Green covers: logged':>21s} {'held-out':>9s} {'rel. width':>10s}")
    for name, _ in judged:
        s = args.seeds
        print(f"{name:18s} {cover_in[name][0] / s:32.2f} {cover_out[name][0] / s:10.2f} "
              f"{cover_in[name][1] / s:21.2f} {cover_out[name][1] / s:9.2f} "
              f"{np.mean(widths[name]):10.3f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
