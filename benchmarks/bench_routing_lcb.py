"""Routing on LiveCodeBench per-problem outcomes, and the estimator's honesty.

    .venv/bin/python benchmarks/bench_routing_lcb.py --data /work/shared/data
    .venv/bin/python benchmarks/bench_routing_lcb.py --ladder api6

Ladders (benchmarks/lcb_sim.py): ``dscoder3`` (DeepSeek-Coder 1.3b / 6.7b / 33b instruct,
self-hosted, priced from size; logged by the FrugalGPT-style cascade S -> M -> L with 10%
exploration) and ``api6`` (six API models of very different price, list prices per token;
logged the way a production fleet logs: everything on the top model plus 15% shadow
attempts on the other tiers). Half the problems train, half are held out; ``--repeats``
tasks per training problem, partial feedback. The search (Ray Tune + Optuna, routing and
guardrail levers and jointly) picks a policy from that window alone; every policy is then
scored exactly on the held-out problems with full information. Baselines in the same run:
each single tier, the cascade of all tiers, the logging policy, the best *static* policy
found with full information on the training problems (every escalation order, per-family
orders by coordinate descent), and the per-problem oracle (which no router can reach when
most problems are unsolved by every tier). The aim: the pick within 1.15x of the best
static policy's cost per Green PR on held-out problems, at a Green rate at least the best
single tier's.

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
    LADDERS,
    attempt_cost,
    best_static_policy,
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


def top_with_shadow(tiers, shadow_rate=0.15):
    """Everything on the top tier; the first attempt shadowed on another tier at
    ``shadow_rate`` (the score router's bias puts every task past the last cut point)."""
    from policies.policy import Policy

    return Policy.model_validate({
        "metadata": {"version": 1, "author": "bench", "created": "2026-11-01T00:00:00Z"},
        "spec": {"routing": {"router": "score", "escalation": list(tiers), "bias": 10.0,
                             "thresholds": [float(i) for i in range(len(tiers) - 1)],
                             "max_attempts": 1, "shadow_rate": shadow_rate}}})


def routellm_policy(train, fleet, cheap="S", top="L", ladder=None):
    """RouteLLM-style: P(S wins | features) by logistic regression; below a threshold go
    to L. The threshold is the one with the best cost per Green PR on the training
    problems (full information: generous to the baseline)."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([[f["difficulty"], f["leetcode"], f["atcoder"]]
                  for f in (features_of(r) for _, r in train.iterrows())], dtype=float)
    rng = np.random.default_rng(0)
    y = rng.random(len(train)) < train[f"p_{cheap}"].to_numpy()
    lr = LogisticRegression().fit(x, y)
    w = lr.coef_[0]
    best = None
    for th in np.linspace(-4, 2, 25):
        # score = -(logit of S winning); start at L when the score >= th
        p = policy([cheap, top], 1).evolve(author="bench", routing={
            "router": "score", "escalation": [cheap, top], "max_attempts": 1,
            "weights": {"difficulty": -float(w[0]), "leetcode": -float(w[1]),
                        "atcoder": -float(w[2])},
            "bias": -float(lr.intercept_[0]), "thresholds": [float(th)]})
        v = exact_value(p, fleet, train, ladder)
        if best is None or v.cost_per_green < best[0]:
            best = (v.cost_per_green, p)
    return best[1]


def clustered_weights(clusters: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_c = int(clusters.max()) + 1
    return rng.poisson(1.0, size=(replicates, n_c)).astype(np.float32)[:, clusters]


def run_nights(args, start, fleet, train, test, ladder, static_cpg, best_single) -> list[dict]:
    """The nightly loop's own decisions, night after night, from ``start``: each night logs
    ``--repeats`` tasks per training problem under the active policy, the window holds the
    last ``--window-nights`` nights, the search runs on it, and the night does what the
    product's nightly does (``controlplane.loop.nightly``): the best candidate that
    ``choose_for_gating`` admits is promoted (the gates are taken as PASSED: this fleet has
    no engines), else the exploration change (``plan_exploration``, the default 2% budget)
    when one is planned, else nothing. Each promotion's prediction is checked against the
    truth on the logged problems (exact expectations, full information), and the held-out
    problems give the night's cost per Green PR as a ratio to the best static policy."""
    import pandas as pd

    from controlplane.loop.nightly import choose_exploration, choose_for_gating
    from experiments.exploration import plan_exploration
    from experiments.search import search_candidates
    from experiments.window import build_window

    active, logs, rows = start, [], []
    print(f"\nThe nightly loop, {args.nights} nights from the logging policy (window: "
          f"{args.window_nights} nights of {args.repeats} tasks per training problem):",
          flush=True)
    for night in range(1, args.nights + 1):
        t0 = time.perf_counter()
        logs.append(simulate_log(active, fleet, train, args.repeats, seed=1000 + night,
                                 ladder=ladder))
        recent = logs[-args.window_nights:]
        window = build_window(*(pd.concat([f[i] for f in recent], ignore_index=True)
                                for i in range(3)), fleet)
        result = search_candidates(window, fleet, active,
                                   levers=("routing", "guardrails", "all"), candidates=8,
                                   trials=args.trials, per_trial=args.per_trial,
                                   executor=args.executor, progress=False)
        before = exact_value(active, fleet, train, ladder)
        gating = choose_for_gating(list(result), proposed_hashes={})
        change, action, predicted = None, "nothing", None
        if gating.chosen:
            change = gating.chosen[0]
            action, predicted = f"promote {change.lever}", change.deltas.cost_per_green_pr
            print("    promoted: " + change.policy.spec.model_dump_json(exclude_defaults=True))
        else:
            plan = plan_exploration(result, window, active, days=len(recent))
            change, why = choose_exploration(plan, {})
            action = (f"explore {','.join(plan.tiers)} at {plan.rate:.0%} "
                      f"(${plan.usd_per_day:.2f}/day of ${plan.budget_usd_per_day:.2f})"
                      if change is not None else f"nothing ({why})")
        if change is not None:
            active = change.policy
        after = exact_value(active, fleet, train, ladder)
        true_delta = after.cost_per_green / before.cost_per_green - 1.0
        held = exact_value(active, fleet, test, ladder)
        row = {"night": night, "action": action, "tasks": window.n,
               "predicted": predicted, "true": true_delta,
               "inside": None if predicted is None else predicted.covers(true_delta),
               "green": held.green_rate, "cpg": held.cost_per_green,
               "x_static": held.cost_per_green / static_cpg,
               "routing": active.spec.routing.model_dump_json(exclude_defaults=True),
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        pred = ("" if predicted is None else
                f" predicted {100 * predicted.point:+.1f}% [{100 * predicted.low:+.1f}, "
                f"{100 * predicted.high:+.1f}] true {100 * true_delta:+.1f}% "
                f"{'inside' if row['inside'] else 'OUTSIDE'};")
        print(f"  night {night}: {action};{pred} held-out Green {held.green_rate:.3f} "
              f"$/Green {held.cost_per_green:.5f} = {row['x_static']:.2f}x best static "
              f"({row['seconds']:.0f} s)", flush=True)
    print(f"\n{'night':>5s} {'action':44s} {'predicted d$/Green':>24s} {'true':>7s} "
          f"{'Green':>6s} {'$/Green':>9s} {'x static':>8s}")
    for r in rows:
        p = r["predicted"]
        pred = "" if p is None else (f"{100 * p.point:+.1f}% [{100 * p.low:+.1f}, "
                                     f"{100 * p.high:+.1f}]")
        true = "" if p is None else f"{100 * r['true']:+.1f}%"
        print(f"{r['night']:5d} {r['action'][:44]:44s} {pred:>24s} {true:>7s} "
              f"{r['green']:6.3f} {r['cpg']:9.5f} {r['x_static']:8.2f}")
    promoted = [r for r in rows if r["predicted"] is not None]
    last = rows[-1]
    print(f"promotions inside their predicted 90% interval: "
          f"{sum(bool(r['inside']) for r in promoted)}/{len(promoted)}")
    print(f"night {last['night']}: {last['x_static']:.2f}x the best static policy at Green "
          f"{last['green']:.3f} (aim <= 1.15x at Green >= {best_single:.3f}: "
          f"{'MET' if last['x_static'] <= 1.15 and last['green'] >= best_single - 1e-9 else 'NOT MET'})"
          f"; routing {last['routing']}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--ladder", default="dscoder3", choices=sorted(LADDERS))
    ap.add_argument("--logging", default=None, choices=["cascade", "top-shadow"],
                    help="logging policy (default: cascade for dscoder3, top-shadow for api6)")
    ap.add_argument("--repeats", type=int, default=10, help="logged tasks per train problem")
    ap.add_argument("--seeds", type=int, default=20, help="seeds of the honesty check")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--per-trial", type=int, default=40)
    ap.add_argument("--executor", default="tune", choices=["tune", "inline"])
    ap.add_argument("--nights", type=int, default=0,
                    help="also run the nightly loop this many nights from the logging policy")
    ap.add_argument("--window-nights", type=int, default=3,
                    help="nights of telemetry each night's window holds")
    args = ap.parse_args(argv)

    from experiments.estimator import estimate
    from experiments.outcomes import fit_outcome_models
    from experiments.replay import ReplayContext
    from experiments.search import search_candidates
    from experiments.window import build_window

    t0 = time.perf_counter()
    ladder = LADDERS[args.ladder]
    names = ladder.names
    fleet = ladder_fleet(ladder)
    problems = load_problems(args.data, ladder)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(problems))
    train, test = problems.iloc[order[: len(order) // 2]], problems.iloc[order[len(order) // 2:]]
    logging_kind = args.logging or ("top-shadow" if args.ladder == "api6" else "cascade")
    logging = (top_with_shadow(names) if logging_kind == "top-shadow"
               else policy(names, len(names), explore=0.1))
    frames = simulate_log(logging, fleet, train, args.repeats, seed=0, ladder=ladder)
    window = build_window(*frames, fleet)
    print(f"ladder {ladder.name} (LiveCodeBench {ladder.release}): {len(problems)} problems "
          f"({len(train)} train / {len(test)} held out); logged by {logging_kind}: "
          f"{window.n} tasks, {len(frames[1])} attempts "
          f"({int((frames[1]['purpose'] == 'shadow').sum())} shadow)", flush=True)
    for t in ladder.tiers:
        print(f"  {t.tier}: {t.label:32s} ${attempt_cost(fleet, t.tier, ladder):.6f} an "
              f"attempt, pass@1 {problems[f'p_{t.tier}'].mean():.3f}", flush=True)

    result = search_candidates(window, fleet, logging,
                               levers=("routing", "guardrails", "all"), candidates=8,
                               trials=args.trials, per_trial=args.per_trial,
                               executor=args.executor, progress=True)
    # What the product does: the best feasible candidate, else keep the active policy.
    chosen = next((c for c in result if c.feasible), None)
    print(f"search: {result.evaluated} candidates evaluated in {result.seconds:.1f} s; "
          f"ranked (estimates on the logged window):", flush=True)
    for c in result:
        e, d = c.estimate, c.deltas
        print(f"  {c.lever:11s} $/Green {e.cost_per_green_pr.point:.6f} "
              f"d$/Green {100 * d.cost_per_green_pr.point:+.1f}% "
              f"[{100 * d.cost_per_green_pr.low:+.1f}, {100 * d.cost_per_green_pr.high:+.1f}] "
              f"dGreen {100 * d.green_prs.point:+.1f}% [{100 * d.green_prs.low:+.1f}, "
              f"{100 * d.green_prs.high:+.1f}] support {e.support:.3f} "
              f"feasible={c.feasible} risk={c.risk}")

    singles = [(f"single {t.tier} ({t.label})", policy([t.tier], 1)) for t in ladder.tiers]
    best_single_train = max(exact_value(p, fleet, train, ladder).green_rate for _, p in singles)
    static, static_train = best_static_policy(fleet, train, ladder, min_green=best_single_train)
    print(f"best static policy (full information on the train problems, Green rate >= "
          f"{best_single_train:.3f}): {static.spec.routing.model_dump_json(exclude_defaults=True)}"
          f"; train $/Green {static_train.cost_per_green:.6f}", flush=True)
    oracle = oracle_value(fleet, test, ladder=ladder)
    rows = []
    named = [*singles]
    if args.ladder == "dscoder3":
        named.append(("RouteLLM-style threshold S|L", routellm_policy(train, fleet,
                                                                     ladder=ladder)))
    named += [(f"cascade {'>'.join(names)}", policy(names, len(names))),
              (f"logging policy ({logging_kind})", logging),
              ("best static (full information)", static),
              ("autopilot search pick", chosen.policy if chosen else logging)]
    for name, p in named:
        v = exact_value(p, fleet, test, ladder)
        rows.append((name, v.green_rate, v.fpy, v.cost_per_green))
    rows.append(("oracle (cheapest passing tier)", oracle.green_rate, oracle.fpy,
                 oracle.cost_per_green))
    best_single = max(r[1] for r in rows[:len(singles)])
    static_cpg = next(r[3] for r in rows if r[0].startswith("best static"))
    print("\nHeld-out problems, exact expected values (full information):")
    print(f"{'policy':46s} {'green rate':>10s} {'FPY':>7s} {'$/Green PR':>11s} "
          f"{'x static':>9s} {'x oracle':>9s}")
    for name, g, f, c in rows:
        print(f"{name:46s} {g:10.3f} {f:7.3f} {c:11.6f} {c / static_cpg:9.2f} "
              f"{c / oracle.cost_per_green:9.2f}")
    v = exact_value(chosen.policy if chosen else logging, fleet, test, ladder)
    if chosen is None:
        print("\nno feasible candidate: the active (logging) policy stays")
    else:
        print(f"\npick: {chosen.lever}; estimate on the logged window: $/Green "
              f"{chosen.estimate.cost_per_green_pr}, support {chosen.estimate.support:.3f}")
        print("pick routing: " + chosen.policy.spec.routing.model_dump_json(
            exclude_defaults=True) + " guardrails: "
              + chosen.policy.spec.guardrails.model_dump_json(exclude_defaults=True))
    print(f"aim green >= best single tier ({best_single:.3f}): "
          f"{'MET' if v.green_rate >= best_single - 1e-9 else 'NOT MET'} ({v.green_rate:.3f}); "
          f"aim $/Green <= 1.15x the best static policy: "
          f"{'MET' if v.cost_per_green <= 1.15 * static_cpg else 'NOT MET'} "
          f"({v.cost_per_green / static_cpg:.2f}x)", flush=True)

    if args.nights:
        run_nights(args, logging, fleet, train, test, ladder, static_cpg, best_single)

    # ------------------------------------------------------------------ honesty
    judged = [(f"cascade {'>'.join(names)}", policy(names, len(names))),
              (f"single {names[-1]}", policy([names[-1]], 1)),
              ("best static", static)]
    if chosen is not None:
        judged.append(("search pick", chosen.policy))
    cover_in = {n: [0, 0] for n, _ in judged}
    cover_out = {n: [0, 0] for n, _ in judged}
    widths = {n: [] for n, _ in judged}
    for seed in range(1, args.seeds + 1):
        r = np.random.default_rng(seed)
        o = r.permutation(len(problems))
        tr, te = problems.iloc[o[: len(o) // 2]], problems.iloc[o[len(o) // 2:]]
        fr = simulate_log(logging, fleet, tr, args.repeats, seed=seed, ladder=ladder)
        w = build_window(*fr, fleet)
        ctx = ReplayContext(w, fit_outcome_models(w))
        cl = fr[0]["repo"].astype("category").cat.codes.to_numpy()
        W = clustered_weights(cl, 200, seed)
        for name, p in judged:
            e = estimate(p, w, context=ctx, weights=W, level=0.9)
            tin = exact_value(p, fleet, tr, ladder)
            tout = exact_value(p, fleet, te, ladder)
            for cover, truth in ((cover_in, tin), (cover_out, tout)):
                cover[name][0] += e.cost_per_green_pr.covers(truth.cost_per_green)
                cover[name][1] += e.green_prs.covers(truth.green_rate * w.n)
            widths[name].append(e.cost_per_green_pr.width / e.cost_per_green_pr.point)
        print(f"  honesty seed {seed}/{args.seeds} done", flush=True)
    if args.seeds == 0:
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
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
