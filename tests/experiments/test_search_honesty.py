"""Issue 12, causes 5-8: what the search optimises, where it starts, where it spends its
per-family parameters, how it ranks, and when it calls a candidate "low" risk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from experiments.estimator import Deltas, Interval, bootstrap_weights, estimate
from experiments.replay import ReplayContext, replay_policy
from experiments.search import (
    feasibility_reasons,
    lever_context,
    objective,
    rank_key,
    risk_level,
    search_candidates,
)
from policies.levers import LEVER_NAMES, apply_joint, joint_anchor
from policies.policy import GateLimits, load_policy

HEAD = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 5, author: t, created: 2026-11-01T00:00:00Z}
spec:
"""
TOP_ONLY = HEAD + "  routing: {router: fixed, escalation: [L], max_attempts: 1}\n"


# ------------------------------------------------------------------ cause 5: FPY margin
def test_fpy_margin_is_unset_by_default_and_keeps_every_existing_hash():
    from pathlib import Path

    from contracts.documents import content_hash

    starter = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"
    policy = load_policy(starter)
    assert policy.spec.gates.fpy_margin is None
    assert "fpy_margin" not in policy.spec_json()["gates"]  # the hash did not move
    assert policy.content_hash == content_hash(policy.spec_json())
    owned = policy.evolve(author="t", gates={"fpy_margin": 0.05})
    assert owned.spec.gates.fpy_margin == 0.05
    assert owned.content_hash != policy.content_hash
    assert load_policy(owned.to_yaml()).content_hash == owned.content_hash
    with pytest.raises(ValueError):
        GateLimits(fpy_margin=-0.1)


def test_objective_reports_fpy_and_constrains_it_only_with_its_own_margin():
    active = {"green_prs": 100.0, "fpy": 0.8, "cost_per_green_pr": 1.0, "support": 1.0}
    cascade = {"green_prs": 110.0, "fpy": 0.3, "cost_per_green_pr": 0.5, "support": 1.0}
    # The Green-PR margin never judges FPY: a cheap-first cascade is not penalised...
    assert objective(cascade, active, 0.02) == pytest.approx(0.5)
    # ... unless the owner sets an FPY margin.
    assert objective(cascade, active, 0.02, fpy_margin=0.05) > 10 * 0.5
    fewer_green = {**cascade, "green_prs": 90.0}
    assert objective(fewer_green, active, 0.02) > 10 * 0.5


def test_feasibility_judges_green_prs_and_fpy_apart():
    d = Deltas(green_prs=Interval(0.1, 0.05, 0.15), fpy=Interval(-0.5, -0.55, -0.45),
               cost_per_green_pr=Interval(-0.4, -0.45, -0.35))
    assert feasibility_reasons(d, 0.02) == []
    assert feasibility_reasons(d, 0.02, fpy_margin=0.1) == [
        "FPY may fall 0.550 (fpy_margin 0.100)"]
    worse = Deltas(green_prs=Interval(-0.01, -0.05, 0.02), fpy=d.fpy,
                   cost_per_green_pr=d.cost_per_green_pr)
    assert feasibility_reasons(worse, 0.02)[0].startswith("Green PRs may fall 5.0%")


def test_a_cheap_first_cascade_is_feasible_when_fpy_is_only_reported(logged, models, fleet):
    """From "one try on the top tier", a cascade S -> M -> L raises Green PRs and cuts cost
    per Green PR while its FPY falls by construction (its first try is the cheap tier):
    the search must neither penalise nor refuse it, unless an owner sets an FPY margin."""
    from experiments.estimator import compare, point_summary

    _, window = logged
    top = load_policy(TOP_ONLY)
    cascade = top.evolve(author="t", routing={"router": "fixed", "escalation": ["S", "M", "L"],
                                              "max_attempts": 3})
    ctx = ReplayContext(window, models)
    weights = bootstrap_weights(window.n, 60, 0)
    a = estimate(top, window, context=ctx, weights=weights)
    c = estimate(cascade, window, context=ctx, weights=weights)
    d = compare(c, a)
    # The shape of the issue: more Green PRs, much cheaper, far lower FPY.
    assert d.green_prs.low > 0 and d.cost_per_green_pr.high < -0.2 and d.fpy.high < -0.3
    margin = top.spec.gates.non_inferiority_margin
    assert feasibility_reasons(d, margin, top.spec.gates.fpy_margin) == []
    value = objective(point_summary(c.values), point_summary(a.values), margin,
                      top.spec.gates.fpy_margin)
    assert value == pytest.approx(c.cost_per_green_pr.point)
    owned = top.evolve(author="t", gates={"fpy_margin": 0.05})
    assert feasibility_reasons(d, margin, owned.spec.gates.fpy_margin)[0].startswith(
        "FPY may fall")
    assert objective(point_summary(c.values), point_summary(a.values), margin,
                     owned.spec.gates.fpy_margin) > 10 * value


# --------------------------------------------------- cause 6: the search starts from active
ANCHOR_POLICIES = {
    "naive_all_on_L": None,  # the starter file
    "top_tier_first": HEAD + "  routing: {router: fixed, escalation: [L, M, S]}\n",
    "score_router": HEAD + """
  routing: {router: score, escalation: [S, M, L], weights: {difficulty: 1.7, size: 0.05},
            bias: -0.3, thresholds: [1.2, 3.1], exploration_rate: 0.07, max_attempts: 4}
""",
    "family_overrides": HEAD + """
  routing:
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    families:
      bracket_fix: {escalation: [L, S], thresholds: [0.5], max_attempts: 2}
      list_ops: {escalation: [M, L], thresholds: []}
      expr_eval: {bias: 0.7}
""",
}


@pytest.mark.parametrize("name", sorted(ANCHOR_POLICIES))
def test_estimate_of_the_anchor_is_the_estimate_of_the_active_policy(name, logged, models,
                                                                     fleet):
    from pathlib import Path

    _, window = logged
    text = ANCHOR_POLICIES[name]
    if text is None:
        text = (Path(__file__).resolve().parents[2] / "controlplane" / "starter"
                / "naive_policy.yaml")
    active = load_policy(text)
    ctx = ReplayContext(window, models)
    lctx = lever_context(window, fleet, active=active, context=ctx)
    weights = bootstrap_weights(window.n, 30, 0)
    want = estimate(active, window, context=ctx, weights=weights)
    for names in [[n] for n in LEVER_NAMES] + [list(LEVER_NAMES)]:
        anchored = apply_joint(names, active, joint_anchor(names, active, lctx), lctx)
        assert anchored.content_hash == active.content_hash, names
        got = estimate(anchored, window, context=ctx, weights=weights)
        for figure in ("green_prs", "fpy", "cost_per_green_pr", "spend_usd"):
            assert getattr(got, figure) == getattr(want, figure), (names, figure)


# ------------------------------------------------ cause 7: per-family spend in the context
def test_lever_context_carries_each_familys_spend_and_saving(logged, models, fleet,
                                                             logging_policy):
    _, window = logged
    plain = lever_context(window, fleet)
    assert set(plain.family_usd) == set(window.families) and plain.family_saving == {}
    logged_usd = np.where(window.logged_combo >= 0, np.take_along_axis(
        window.cost_nocache, np.maximum(window.logged_combo, 0), axis=1), 0.0).sum()
    assert sum(plain.family_usd.values()) == pytest.approx(logged_usd)
    ctx = ReplayContext(window, models)
    full = lever_context(window, fleet, active=logging_policy, context=ctx)
    total = replay_policy(logging_policy, ctx).cost.sum()
    assert sum(full.family_usd.values()) == pytest.approx(total)
    assert set(full.family_saving) == set(window.families)
    assert all(0.0 <= full.family_saving[f] <= full.family_usd[f] for f in window.families)


# ------------------------------------------------------ cause 8: rank by the pessimistic end
def _fake(point: float, high: float, feasible: bool = True):
    d = Deltas(green_prs=Interval(0, 0, 0), fpy=Interval(0, 0, 0),
               cost_per_green_pr=Interval(point, point - 0.1, high))
    est = SimpleNamespace(cost_per_green_pr=Interval(1 + point, 0.5, 2.0))
    return SimpleNamespace(deltas=d, estimate=est, feasible=feasible, name=(point, high))


def test_rank_key_orders_by_the_least_saving_the_interval_admits():
    bold = _fake(-0.40, +0.05)  # best point, but the interval admits a loss
    sure = _fake(-0.15, -0.10)
    thin = _fake(-0.30, -0.02)
    unbounded = _fake(-0.50, float("inf"))
    infeasible = _fake(-0.60, -0.50, feasible=False)
    ranked = sorted([bold, unbounded, infeasible, thin, sure], key=rank_key)
    assert [c.name for c in ranked] == [sure.name, thin.name, bold.name, unbounded.name,
                                        infeasible.name]


def test_search_result_is_ranked_by_the_pessimistic_end(logged, models, fleet,
                                                        logging_policy):
    _, window = logged
    result = search_candidates(window, fleet, logging_policy,
                               levers=("routing", "guardrails"), candidates=8, trials=4,
                               per_trial=12, executor="inline", models=models,
                               bootstrap=60, progress=False)
    assert len(result) >= 2
    assert [rank_key(c) for c in result] == sorted(rank_key(c) for c in result)
    record = result[0].record()
    assert record["rank_by"] == result[0].deltas.cost_per_green_pr.high
    for key in ("cost_per_green_pr_rel", "green_prs_rel", "fpy_abs"):
        assert set(record["deltas"][key]) == {"point", "low", "high"}
        assert all(v is None or isinstance(v, float) for v in record["deltas"][key].values())


# -------------------------------- caps fitted on the window are not a "low"-risk saving
def test_risk_is_not_low_when_the_saving_comes_from_caps_cutting_observed_tasks():
    iv = Interval(0.0, 0.0, 0.0)
    deltas = Deltas(green_prs=iv, fpy=iv, cost_per_green_pr=Interval(-0.05, -0.06, -0.04))
    active = SimpleNamespace(budget_exceeded=0.0)

    def est(budget_exceeded):
        return SimpleNamespace(support=1.0, assumptions=[], n_tasks=4000,
                               budget_exceeded=budget_exceeded)

    assert risk_level(est(0.0), deltas, True, active) == "low"
    assert risk_level(est(73.0), deltas, True, active) == "medium"


def test_guardrail_caps_that_cut_the_window_are_not_rated_low(logged, models, fleet,
                                                              logging_policy):
    _, window = logged
    result = search_candidates(window, fleet, logging_policy, levers=("guardrails",),
                               candidates=8, trials=6, per_trial=16, executor="inline",
                               models=models, bootstrap=60, progress=False)
    base = result.active_estimate.budget_exceeded
    cutting = [c for c in result if c.estimate.budget_exceeded - base > 4.0]
    assert cutting, "the guardrails search proposed no cap that binds on this window"
    for c in cutting:
        assert c.risk != "low", c.summary()
        assert any("caps end" in r for r in c.risk_reasons)


# ------------------------------------------------- the search reaches a far escalation order
def test_from_top_tier_only_the_search_reaches_the_cheap_first_cascade(logged, models, fleet):
    """Every escalation order is replayed once before the optimiser runs, so even two
    trials from "one try on the top tier" rank a cheap-first cascade first."""
    from experiments.search import escalation_seeds

    _, window = logged
    top = load_policy(TOP_ONLY)
    result = search_candidates(window, fleet, top, levers=("routing",), candidates=3,
                               trials=2, per_trial=4, executor="inline", progress=False,
                               models=models, bootstrap=60)
    best = result[0]
    assert best.feasible, best.reasons
    assert best.policy.spec.routing.escalation[0] != "L"
    assert best.deltas.cost_per_green_pr.high < -0.2 and best.deltas.green_prs.low > -0.02

    from experiments.estimator import point_summary
    from experiments.search import _Evaluator  # the seeds themselves: one per order

    ctx = ReplayContext(window, models)
    ev = _Evaluator(ctx, lever_context(window, fleet), top, ("routing",),
                    point_summary(replay_policy(top, ctx)), 0.02)
    orders = {s["routing__escalation"] for s in escalation_seeds(ev)}
    assert {"S>M>L", "S>L", "M>L", "S"} <= orders
