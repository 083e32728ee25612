"""Exploration changes: buy, within a dollar budget, the evidence a promising candidate lacks.

From the naive start (every task on L) the window hardly shows S, so cheap-first routings are
blocked by their Green-PR intervals. The plan shadows the tiers they need, sized to the
budget; a day logged under it lets the search find a feasible, much cheaper routing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from experiments_testkit import simulate_window

from experiments.exploration import blocked_candidates, exploration_targets, plan_exploration
from experiments.search import search_candidates
from policies.policy import load_policy

NAIVE = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "naive_policy.yaml"
SEARCH = {"levers": ("routing",), "trials": 3, "per_trial": 16, "executor": "inline",
          "progress": False, "bootstrap": 100}


@pytest.fixture(scope="module")
def naive_night(fleet, tmp_path_factory):
    naive = load_policy(NAIVE)
    tmp = tmp_path_factory.mktemp("explore")
    _, window = simulate_window(naive, fleet, tmp, tasks=1500, seed=3)
    result = search_candidates(window, fleet, naive, **SEARCH)
    return naive, window, result, tmp


def test_the_naive_night_has_blocked_cheap_first_candidates(naive_night):
    _naive, _window, result, _ = naive_night
    blocked = blocked_candidates(list(result), 0.02)
    assert blocked, "a cheap-first routing should be promising but blocked"
    assert all(c.deltas.cost_per_green_pr.point <= -0.02 for c in blocked)
    assert all(not c.feasible or c.risk == "high" or c.deltas.cost_per_green_pr.high >= 0
               for c in blocked)


def test_the_plan_shadows_the_missing_tiers_within_the_budget(naive_night):
    naive, window, result, _ = naive_night
    plan = plan_exploration(result, window, naive, budget_share=0.02)
    assert plan.candidate is not None, plan.reason
    routing = plan.candidate.policy.spec.routing
    assert "L" not in plan.tiers and "S" in plan.tiers  # L is where every task starts
    assert routing.shadow_tiers == list(plan.tiers)
    assert 0.05 <= plan.rate <= 1.0
    assert 0 < plan.usd_per_day <= plan.budget_usd_per_day
    spend = result.active_estimate.spend_usd.point
    assert plan.budget_usd_per_day == pytest.approx(0.02 * spend)
    # Exploration changes nothing a caller sees: same Green PRs, cost up by the shadows.
    d = plan.candidate.deltas
    assert d.green_prs.point == pytest.approx(0.0, abs=1e-9)
    assert d.cost_per_green_pr.point == pytest.approx(plan.usd_per_day / spend, rel=0.05)
    assert plan.candidate.lever == "exploration" and plan.candidate.risk == "low"
    # Everything but the shadows is the active policy.
    spec = plan.candidate.policy.spec.model_dump(mode="json")
    active = naive.spec.model_dump(mode="json")
    for key in ("shadow_tiers", "shadow_rate", "families"):
        spec["routing"].pop(key, None)
        active["routing"].pop(key, None)
    assert spec == active


def test_a_smaller_budget_buys_a_smaller_rate_and_none_at_all_below_the_floor(naive_night):
    naive, window, result, _ = naive_night
    full = plan_exploration(result, window, naive, budget_share=0.02)
    half = plan_exploration(result, window, naive, budget_share=0.005)
    assert half.candidate is None or half.rate < full.rate or full.rate == 1.0
    none = plan_exploration(result, window, naive, budget_share=0.0)
    assert none.candidate is None and "buys a shadow rate" in none.reason
    assert "already shadowed" in none.reason


def test_the_evidence_bought_narrows_what_blocked_the_candidates(naive_night, fleet):
    """A day logged under the plan: the blocked specs, estimated again, have more support,
    and most are decided (non-inferior, or shown to lose Green PRs beyond the margin)."""
    from experiments.exploration import evidence_bought

    naive, window, result, tmp = naive_night
    plan = plan_exploration(result, window, naive, budget_share=0.1)
    _, explored = simulate_window(plan.candidate.policy, fleet, tmp, tasks=1500, seed=4)
    after = search_candidates(explored, fleet, plan.candidate.policy, **SEARCH)
    bought = evidence_bought(plan.blocked, explored, after, plan.candidate.policy)
    assert len(bought) == len(plan.blocked) > 0
    before = sum(b["support"][0] for b in bought) / len(bought)
    now = sum(b["support"][1] for b in bought) / len(bought)
    assert now > before, bought
    decided = [b for b in bought if b["decided"] != "open"]
    assert len(decided) >= len(bought) / 2, bought


def test_targets_are_the_tiers_a_blocked_candidate_uses_and_the_active_does_not_start_on():
    head = ("apiVersion: autopilot/v1\nkind: Policy\nmetadata: {version: 1, author: t, "
            "created: 2026-11-01T00:00:00Z}\nspec:\n  routing: ")
    active = load_policy(head + "{router: fixed, escalation: [L]}\n")
    cascade = load_policy(head + "{router: fixed, escalation: [L], families: "
                          "{a: {escalation: [S, L]}}}\n")

    class C:
        policy = cascade

    tiers, families = exploration_targets(active, [C()], ["a", "b"])
    assert tiers == ["S"] and families == ["a"]


def test_nothing_to_explore_without_a_blocked_candidate(naive_night):
    naive, window, result, _ = naive_night

    class Empty(list):
        context = result.context
        weights = result.weights
        active_estimate = result.active_estimate

    plan = plan_exploration(Empty(), window, naive)
    assert plan.candidate is None and "no promising candidate" in plan.reason


def test_an_active_policy_on_one_tier_gets_shadows_on_tiers_outside_its_order(naive_night):
    """The demo's night-1 promotion put everything on L with no exploration: the evidence on
    S and M can then only come from shadow tiers outside the escalation order."""
    from experiments.replay import replay_policy

    naive, window, result, _ = naive_night
    only_l = naive.evolve(author="t", routing={
        **naive.spec.routing.model_dump(mode="json"), "router": "fixed", "escalation": ["L"],
        "thresholds": [], "exploration_rate": 0.0, "shadow_rate": 0.0})
    cheap = only_l.evolve(author="t", routing={
        **only_l.spec.routing.model_dump(mode="json"), "escalation": ["S", "L"]})

    class Blocked:
        policy = cheap

    tiers, families = exploration_targets(only_l, [Blocked()], list(window.families))
    assert tiers == ["S"] and families == list(window.families)
    from experiments.exploration import _with_shadows

    explore = _with_shadows(only_l, tiers, families, list(window.families), 0.5)
    assert explore.spec.routing.shadow_tiers == ["S"] and explore.spec.routing.shadow_rate == 0.5
    spent = replay_policy(explore, result.context).eval.sum()
    assert spent > replay_policy(only_l, result.context).eval.sum()


def test_a_shadow_is_priced_with_its_verification(naive_night):
    """The harness verifies shadow attempts too: exploration's spend is the shadow call plus
    one verification per shadow (on the reference fleet the verification costs more than an
    L call, so leaving it out under-stated exploration's cost many times over)."""
    import dataclasses

    import numpy as np

    from experiments.exploration import _with_shadows
    from experiments.replay import ReplayContext, replay_policy

    naive, window, result, _ = naive_night
    explore = _with_shadows(naive, ["S"], list(window.families), list(window.families), 1.0)
    models = result.context.models
    free = dataclasses.replace(window, verifier_per_attempt=np.zeros(window.n))

    def extra(w):
        ctx = ReplayContext(w, models)
        return replay_policy(explore, ctx).eval - replay_policy(naive, ctx).eval

    with_verifier, without = extra(window), extra(free)
    # Every task starts on L here (the naive policy, bar its exploration), so nearly every
    # one is shadowed on S: the difference is about one verification per task.
    added = (with_verifier - without).sum()
    assert added == pytest.approx(window.verifier_per_attempt.sum(), rel=0.25)
    assert added > 0


def test_the_budget_holds_when_naming_shadow_tiers_also_wakes_the_active_shadow_rate(naive_night):
    """An L-only policy with a global shadow rate shadows nothing (no other tier in its order);
    exploring one family names shadow tiers, which lets that global rate shadow every family:
    spend is not proportional to the rate, and the plan must still fit the budget."""
    naive, window, result, _ = naive_night
    families = list(window.families)
    only_l = naive.evolve(author="t", routing={
        **naive.spec.routing.model_dump(mode="json"), "router": "fixed", "escalation": ["L"],
        "thresholds": [], "exploration_rate": 0.0, "shadow_rate": 0.3})
    one = families[0]
    cheap = only_l.evolve(author="t", routing={
        **only_l.spec.routing.model_dump(mode="json"),
        "families": {one: {"escalation": ["S", "L"]}}})

    class Blocked:
        policy = cheap
        lever = "routing"
        feasible = False
        risk = "high"
        reasons = ["Green PRs may fall"]

        class deltas:
            class cost_per_green_pr:
                point, low, high = -0.3, -0.5, 0.1

            class green_prs:
                point, low, high = 0.0, -0.1, 0.05

        class estimate:
            support = 0.6

    class Result(list):
        context = result.context
        weights = result.weights
        active_estimate = result.active_estimate

    for share in (0.02, 0.005):
        plan = plan_exploration(Result([Blocked()]), window, only_l, budget_share=share)
        if plan.candidate is not None:
            assert plan.usd_per_day <= plan.budget_usd_per_day + 1e-12, plan.reason
            assert plan.families == (one,)
            # The other families' dormant 30% stays dormant: no budget spent where no
            # candidate needs evidence.
            from experiments.exploration import effective_shadow_rate

            assert all(effective_shadow_rate(plan.candidate.policy, f) == 0.0
                       for f in families if f != one)
            assert effective_shadow_rate(plan.candidate.policy, one) == plan.rate
        else:
            assert "buys a shadow rate" in plan.reason


HEAD = ("apiVersion: autopilot/v1\nkind: Policy\nmetadata: {version: 1, author: t, "
        "created: 2026-11-01T00:00:00Z}\nspec:\n  routing: ")


def _blocked(policy):
    class C:
        pass
    c = C()
    c.policy = policy
    return c


def test_tiers_the_active_plan_already_serves_are_not_shadowed_again():
    """A cascade's later tiers serve every task that reaches them: a candidate that inserts a
    tier before them needs evidence on the new tier only (a shadow on it beside the served
    plan shows it after the same failures). Shadowing the top tier again would spend a
    fleet's whole budget where its top tier costs hundreds of times the others."""
    active = load_policy(HEAD + "{router: fixed, escalation: [S, L]}\n")
    inserted = load_policy(HEAD + "{router: fixed, escalation: [S, M, L]}\n")
    tiers, families = exploration_targets(active, [_blocked(inserted)], ["a"])
    assert tiers == ["M"] and families == ["a"]
    # A candidate starting on a tier the active plan reaches only after failures needs it
    # on every task: its first tier stays a target.
    later_first = load_policy(HEAD + "{router: fixed, escalation: [L]}\n")
    tiers, _ = exploration_targets(active, [_blocked(later_first)], ["a"])
    assert tiers == ["L"]
    # A score router's start depends on the task: nothing is known to be served.
    scored = load_policy(HEAD + "{router: score, escalation: [S, L], thresholds: [0.5], "
                         "weights: {difficulty: 1.0}}\n")
    tiers, _ = exploration_targets(scored, [_blocked(inserted)], ["a"])
    assert tiers == ["S", "M", "L"]


def test_an_exploration_replaces_the_shadows_it_pays_for():
    """The active policy shadows every task on cheap tiers; an exploration aimed elsewhere
    runs at the rate its budget buys, not at the old rate on the new tiers (which priced a
    100% shadow rate on an expensive tier and bought nothing)."""
    from experiments.exploration import _with_shadows

    active = load_policy(HEAD + "{router: fixed, escalation: [S, L], shadow_rate: 1.0, "
                         "shadow_tiers: [M]}\n")
    wide = _with_shadows(active, ["M", "L"], ["a", "b"], ["a", "b"], 0.2)
    assert wide.spec.routing.shadow_rate == 0.2 and wide.spec.routing.shadow_tiers == ["M", "L"]
    narrow = _with_shadows(active, ["M"], ["a"], ["a", "b"], 0.3)
    assert narrow.spec.routing.families["a"].shadow_rate == 0.3
    assert narrow.spec.routing.families["b"].shadow_rate == 1.0  # untouched family keeps its


def test_candidates_held_back_only_by_support_are_what_exploration_aims_at(naive_night):
    """The search's objective treats unobserved mass as a violation, so the best ideas a
    window cannot confirm never reach the ranked list; the result keeps them apart
    (``unsupported``), never feasible, and the exploration plan aims at their tiers."""
    naive, window, result, _ = naive_night
    assert result.unsupported, "cheap-first routings on unobserved states should be kept"
    for c in result.unsupported:
        assert not c.feasible and c.risk == "high"
        assert c.estimate.support < 0.99
        assert any("support" in r for r in c.reasons)
    ranked_hashes = {c.policy.content_hash for c in result}
    assert not ranked_hashes & {c.policy.content_hash for c in result.unsupported}

    class OnlyUnsupported(list):
        context = result.context
        weights = result.weights
        active_estimate = result.active_estimate
        unsupported = result.unsupported

    plan = plan_exploration(OnlyUnsupported(), window, naive, budget_share=0.02)
    assert plan.candidate is not None, plan.reason
    assert "S" in plan.tiers or "M" in plan.tiers


def test_with_every_wanted_tier_shadowed_the_plan_concentrates_on_one_candidates_tiers(
        naive_night):
    """One shadow a task: at a 100% rate over S and M each shows on half the tasks, and no
    budget buys more. The plan then re-aims the shadows at the best blocked candidate's own
    tiers, where each shows on more tasks (the estimator weighs a shadowed path by 1/odds)."""
    from experiments.exploration import shadow_share_per_tier

    naive, window, result, _ = naive_night
    saturated = naive.evolve(author="t", routing=naive.spec.routing.model_copy(
        update={"shadow_rate": 1.0}))
    blocked = blocked_candidates([*result, *result.unsupported], 0.02)
    union, _ = exploration_targets(saturated, blocked, list(window.families))
    plan = plan_exploration(result, window, saturated, budget_share=0.02)
    assert plan.candidate is not None, plan.reason
    assert set(plan.tiers) < set(union)
    for fam in plan.families:
        assert (shadow_share_per_tier(plan.candidate.policy, fam, list(plan.tiers))
                > shadow_share_per_tier(saturated, fam, list(plan.tiers)) + 0.05)


def _plan_for_blocked(lever, spec_of, window, fleet, naive):
    """The search on one lever, its blocked candidates (one of them changes ``spec_of``'s
    section) and tonight's exploration plan for them."""
    search = {**SEARCH, "levers": (lever,)}
    result = search_candidates(window, fleet, naive, **search)
    blocked = blocked_candidates([*result, *result.unsupported], 0.02)
    assert any(spec_of(c.policy.spec) for c in blocked), [c.point for c in result]
    plan = plan_exploration(result, window, naive, budget_share=0.02)
    assert plan.candidate is not None, plan.reason
    return plan, search


def _a_day_under_the_plan_buys_support(plan, search, combos, window, fleet, tmp):
    """A day logged under the plan shows ``combos`` far more often than the window did,
    and the blocked candidates gain support."""
    from experiments.exploration import evidence_bought

    _, explored = simulate_window(plan.candidate.policy, fleet, tmp, tasks=1500, seed=6)
    assert sum(explored.combo_attempts[i] for i in combos) > 5 * max(
        1, sum(window.combo_attempts[i] for i in combos))
    after = search_candidates(explored, fleet, plan.candidate.policy, **search)
    bought = evidence_bought(plan.blocked, explored, after, plan.candidate.policy)
    assert bought and all(b["support"][1] > b["support"][0] for b in bought), bought


def test_a_variant_never_served_is_explored_by_shadows_running_it(logged, logging_policy,
                                                                   fleet, tmp_path):
    """int8 of S and M was never served: a quantization to it is blocked (its combinations
    unsupported). The plan runs it as shadows beside the served attempts
    (``routing.shadow_variants``); a day logged under the plan shows the variant, and the
    blocked quantization gains support."""
    window = logged[1]
    plan, search = _plan_for_blocked("quantization", lambda spec: spec.quantization, window,
                                     fleet, logging_policy)
    routing = plan.candidate.policy.spec.routing
    assert routing.shadow_variants and set(routing.shadow_variants.values()) == {"int8"}
    assert set(routing.shadow_variants) <= set(routing.shadow_tiers)
    int8 = [i for i, c in enumerate(window.combos) if c.variant == "int8"]
    _a_day_under_the_plan_buys_support(plan, search, int8, window, fleet, tmp_path)


def test_an_adapter_never_served_is_explored_by_the_familys_shadows_running_it(
        logged, logging_policy, fleet, tmp_path):
    """The list-ops adapter was never served: a distillation to it is blocked (its
    combination unsupported). The plan runs it as the family's shadows beside the served
    attempts (``routing.families.<family>.shadow_adapters``); a day logged under the plan
    shows the adapter, and the blocked distillation gains support."""
    window = logged[1]
    plan, search = _plan_for_blocked("distillation", lambda spec: spec.distillation, window,
                                     fleet, logging_policy)
    routing = plan.candidate.policy.spec.routing
    shadowed = {f: o.shadow_adapters for f, o in routing.families.items() if o.shadow_adapters}
    assert shadowed == {"list_ops": {"S": "list-ops-v1"}}, shadowed
    assert "S" in routing.shadow_tiers and "+list-ops-v1" in plan.reason
    adapter = [i for i, c in enumerate(window.combos) if c.adapter == "list-ops-v1"]
    _a_day_under_the_plan_buys_support(plan, search, adapter, window, fleet, tmp_path)
