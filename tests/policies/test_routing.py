from datetime import datetime

import pytest

from policies.policy import Policy
from policies.routing import (
    attempt_tier_probabilities,
    choose_start,
    difficulty_score,
    first_tier_probabilities,
    resolve_routing,
    shadow_tier,
    tier_plan,
)


def make(routing: dict, **spec) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"version": 1, "author": "a", "created": datetime(2026, 1, 1)},
            "spec": {"routing": routing, **spec},
        }
    )


SCORED = {
    "router": "score",
    "escalation": ["S", "M", "L"],
    "weights": {"difficulty": 1.0, "size": 0.1},
    "bias": -0.5,
    "thresholds": [1.0, 2.0],
    "max_attempts": 4,
}


def tiers(plan):
    return [a.tier for a in plan]


def test_fixed_router_starts_at_first_tier_and_escalates():
    p = make({"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3})
    assert tiers(tier_plan(p, "any", {"difficulty": 99})) == ["S", "M", "L"]


def test_score_picks_start_tier_by_thresholds():
    p = make(SCORED)
    # score = -0.5 + difficulty + 0.1 * size
    assert tiers(tier_plan(p, "f", {"difficulty": 1, "size": 0})) == ["S", "M", "L", "L"]
    assert tiers(tier_plan(p, "f", {"difficulty": 1.5, "size": 0})) == ["M", "L", "L", "L"]
    # a score exactly on a cut point goes up (bisect right)
    assert tiers(tier_plan(p, "f", {"difficulty": 2.5, "size": 0})) == ["L", "L", "L", "L"]


def test_missing_and_non_numeric_features_count_as_zero():
    r = resolve_routing(make(SCORED), "f")
    assert difficulty_score(r, {}) == -0.5
    assert difficulty_score(r, {"difficulty": "hard", "size": True}) == pytest.approx(-0.4)
    assert difficulty_score(r, {"difficulty": "2"}) == 1.5


def test_attempts_per_tier_and_cap_from_guardrails():
    p = make(
        {"escalation": ["S", "M"], "attempts_per_tier": 2, "max_attempts": 6},
        guardrails={"max_attempts_per_task": 3},
    )
    assert tiers(tier_plan(p, "f", {})) == ["S", "S", "M"]


def test_family_override_replaces_only_named_fields():
    p = make({**SCORED, "families": {"hard": {"escalation": ["M", "L"], "thresholds": [5.0]}}})
    plan = tier_plan(p, "hard", {"difficulty": 1})
    assert tiers(plan) == ["M", "L", "L", "L"]


def test_quantization_and_distillation_shape_the_plan():
    p = make(
        {"escalation": ["M", "L"], "max_attempts": 3},
        quantization={"M": "int8"},
        distillation={"list_ops": {"tier": "S", "adapter": "list-ops-v1"}},
    )
    plan = tier_plan(p, "list_ops", {})
    assert [(a.tier, a.variant, a.adapter) for a in plan] == [
        ("S", None, "list-ops-v1"),
        ("M", "int8", None),
        ("L", None, None),
    ]
    assert tiers(tier_plan(p, "other", {})) == ["M", "L", "L"]


def test_propensities_sum_to_one_and_follow_exploration():
    p = make({**SCORED, "exploration_rate": 0.3})
    probs = first_tier_probabilities(p, "f", {"difficulty": 1})
    assert probs == pytest.approx({0: 0.1 + 0.7, 1: 0.1, 2: 0.1})
    per_attempt = attempt_tier_probabilities(p, "f", {"difficulty": 1})
    assert all(sum(d.values()) == pytest.approx(1.0) for d in per_attempt)
    assert per_attempt[1] == pytest.approx({"M": 0.8, "L": 0.2})


def test_choose_start_is_deterministic_given_draws():
    p = make({**SCORED, "exploration_rate": 0.3})
    assert choose_start(p, "f", {"difficulty": 1}, draw=0.5, pick=0.99) == (0, pytest.approx(0.8))
    assert choose_start(p, "f", {"difficulty": 1}, draw=0.1, pick=0.99) == (2, pytest.approx(0.1))


def test_distilled_family_is_never_explored():
    p = make(
        {**SCORED, "exploration_rate": 0.3},
        distillation={"list_ops": {"tier": "S", "adapter": "a"}},
    )
    assert first_tier_probabilities(p, "list_ops", {"difficulty": 3}) == {0: 1.0, 1: 0.0, 2: 0.0}


def test_shadow_tier_draws():
    p = make({"escalation": ["S", "M", "L"], "shadow_rate": 0.2})
    assert shadow_tier(p, "f", "S", draw=0.5, pick=0.0) is None
    assert shadow_tier(p, "f", "S", draw=0.1, pick=0.0) == "M"
    assert shadow_tier(p, "f", "S", draw=0.1, pick=0.99) == "L"


def test_shadow_probability_is_the_odds_shadow_tier_draws_with():
    from policies.routing import shadow_probability

    p = make({"escalation": ["S", "M", "L"], "shadow_rate": 0.2})
    routing = resolve_routing(p, "f")
    assert shadow_probability(routing, "S", "M") == shadow_probability(routing, "S", "L") == 0.1
    assert shadow_probability(routing, "S", "S") == 0.0  # never on the tier it shadows
    picks = [shadow_tier(p, "f", "S", draw=0.1, pick=(k + 0.5) / 100) for k in range(100)]
    assert picks.count("M") / 100 * 0.2 == pytest.approx(shadow_probability(routing, "S", "M"))


def test_shadow_tiers_may_lie_outside_the_escalation_order():
    from policies.policy import load_policy
    from policies.routing import resolve_routing, shadow_targets, shadow_tier

    head = ("apiVersion: autopilot/v1\nkind: Policy\nmetadata: {version: 1, author: t, "
            "created: 2026-11-01T00:00:00Z}\nspec:\n  routing: ")
    only_l = load_policy(head + "{router: fixed, escalation: [L], shadow_rate: 1.0, "
                         "shadow_tiers: [S, M], families: {a: {shadow_rate: 0.0}}}\n")
    assert shadow_targets(resolve_routing(only_l, "b"), "L") == ["S", "M"]
    assert {shadow_tier(only_l, "b", "L", 0.5, p) for p in (0.1, 0.9)} == {"S", "M"}
    assert shadow_tier(only_l, "a", "L", 0.0, 0.1) is None  # the family's own rate: none
    # Without shadow_tiers: the rest of the escalation order (here: nothing).
    plain = load_policy(head + "{router: fixed, escalation: [L], shadow_rate: 1.0}\n")
    assert shadow_tier(plain, "b", "L", 0.0, 0.5) is None
    # Unset fields stay out of the canonical spec (hashes of stored policies hold).
    assert "shadow_tiers" not in plain.spec_json()["routing"]
