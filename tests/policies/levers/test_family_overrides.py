"""Issue 12, cause 7: per-family routing parameters go to the families that carry the spend
(and, first, to those the estimate says can save most), as many as the budget allows, not
to the first six families in name order."""

from __future__ import annotations

from policies.levers import LeverContext, lever
from policies.levers.routing import PARAM_BUDGET, override_families, space
from policies.policy import load_policy
from serving.testing import tiny_manifest

ACTIVE = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 2, author: t, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [S, M, L]}
""")
# Twelve families; the spend sits on the last ones in name order.
FAMILIES = tuple(f"fam_{c}" for c in "abcdefghijkl")
SPEND = {f: (1000.0 * (i + 1) if i >= 6 else 1.0) for i, f in enumerate(FAMILIES)}


def _families_in(keys) -> set[str]:
    return {k[len("family_"):-len("_escalation")] for k in keys if k.endswith("_escalation")}


def _ctx(**kw) -> LeverContext:
    return LeverContext(fleet=tiny_manifest(), families=FAMILIES, **kw)


def test_overrides_go_to_the_families_that_carry_the_spend():
    ctx = _ctx(family_usd=SPEND)
    base = len(space(ACTIVE, _ctx(family_usd={f: 0.0 for f in FAMILIES})))  # no family
    slots = (20 - base) // 2
    assert 0 < slots < 6
    by_spend = sorted(FAMILIES, key=lambda f: -SPEND[f])
    assert _families_in(space(ACTIVE, ctx, budget=20)) == set(by_spend[:slots])
    assert override_families(ACTIVE, ctx, 20) == by_spend[:slots]  # most spend first


def test_the_estimated_saving_ranks_before_the_spend():
    saving = {"fam_b": 50.0, "fam_a": 10.0}
    ctx = _ctx(family_usd=SPEND, family_saving=saving)
    assert override_families(ACTIVE, ctx, 1000)[:3] == ["fam_b", "fam_a", "fam_l"]


def test_as_many_families_as_the_budget_allows():
    ctx = _ctx(family_usd=SPEND)
    keys = space(ACTIVE, ctx)  # the default budget
    assert len(keys) <= PARAM_BUDGET
    assert len(_families_in(keys)) == len(FAMILIES)  # twelve fit in the default budget: all
    assert len(space(ACTIVE, ctx, budget=1000)) == len(keys)  # never a family twice
    tight = space(ACTIVE, ctx, budget=0)
    assert _families_in(tight) == set()


def test_a_family_that_spent_nothing_gets_no_parameters():
    spend = {**SPEND, "fam_l": 0.0}
    assert "fam_l" not in override_families(ACTIVE, _ctx(family_usd=spend), 1000)


def test_without_spend_figures_families_are_taken_in_name_order():
    assert override_families(ACTIVE, _ctx(), 1000) == sorted(FAMILIES)


def test_the_anchor_covers_the_chosen_families():
    ctx = _ctx(family_usd=SPEND)
    routing = lever("routing")
    assert set(routing.anchor(ACTIVE, ctx)) == set(routing.space(ACTIVE, ctx))
