"""The search starts from the active policy: every lever's anchor, applied, gives it back.

Issue 12, cause 6: with no task features the routing anchor reset bias and router, set the
cut points to fixed quantiles, rewrote an escalation outside the options ("top tier
first") as "everything to the cheapest" and dropped family overrides; the guardrails
anchor dropped spend and token caps; the cache anchor rounded the TTL. Here every lever's
anchor, alone and jointly, must reproduce the active spec (same content hash), and be a
point of its own space (so Optuna can be seeded with it).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from policies.levers import (
    LEVER_NAMES,
    LeverContext,
    apply_joint,
    joint_anchor,
    joint_space,
)
from policies.policy import load_policy, validate_against_fleet
from serving.testing import tiny_manifest

STARTER = Path(__file__).resolve().parents[3] / "controlplane" / "starter"

HEAD = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 4, author: t, created: 2026-11-01T00:00:00Z}
spec:
"""

POLICIES = {
    "naive_all_on_L": (STARTER / "naive_policy.yaml").read_text(),
    "starter_cascade": (STARTER / "policy.yaml").read_text(),
    "top_tier_first": HEAD + """
  routing: {router: fixed, escalation: [L, M, S], max_attempts: 3}
""",
    "single_L": HEAD + """
  routing: {router: fixed, escalation: [L], max_attempts: 2, exploration_rate: 0.07}
""",
    "score_router": HEAD + """
  routing:
    router: score
    escalation: [S, M, L]
    weights: {difficulty: 2.5, size: -0.125, lines: 0.3333333}
    bias: 0.25
    thresholds: [1.1, 2.2]
    attempts_per_tier: 3
    max_attempts: 7
    exploration_rate: 0.07
    shadow_rate: 0.03
""",
    "family_overrides": HEAD + """
  routing:
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    families:
      bracket_fix: {escalation: [L, S], thresholds: [0.5], bias: 1.0, max_attempts: 2}
      list_ops: {max_attempts: 9, attempts_per_tier: 2}
      expr_eval: {weights: {size: 0.2}, bias: -0.5}
      not_in_window: {escalation: [M], thresholds: []}
""",
    "every_section": HEAD + """
  routing: {router: fixed, escalation: [M, L], max_attempts: 4}
  quantization: {S: bf16, M: int8}
  cache:
    prefix: {S: true, M: false}
    response: {enabled: true, mode: similarity, ttl_s: 5000, exclude_families: [list_ops]}
  distillation: {list_ops: {tier: S, adapter: list-ops-v1}}
  guardrails: {max_attempts_per_task: 8, max_usd_per_task: 0.37, max_tokens_per_task: 12345}
  gates: {non_inferiority_margin: 0.05, fpy_margin: 0.1}
""",
}


def _contexts():
    fleet = tiny_manifest()
    rng = random.Random(0)
    families = ("list_ops", "bracket_fix", "expr_eval", "assert_value")
    with_features = LeverContext(
        fleet=fleet, families=families,
        feature_sample={"difficulty": tuple(float(rng.randint(1, 3)) for _ in range(200)),
                        "size": tuple(float(rng.randint(1, 12)) for _ in range(200))},
        task_usd=tuple(rng.uniform(0.001, 0.05) for _ in range(200)),
        task_tokens=tuple(float(rng.randint(500, 9000)) for _ in range(200)))
    no_features = LeverContext(fleet=fleet, families=families)
    return {"features": with_features, "no_features": no_features}


CONTEXTS = _contexts()


@pytest.mark.parametrize("ctx_name", sorted(CONTEXTS))
@pytest.mark.parametrize("policy_name", sorted(POLICIES))
@pytest.mark.parametrize("lever_name", [*LEVER_NAMES, "all"])
def test_anchor_reproduces_the_active_policy(policy_name, ctx_name, lever_name):
    active = load_policy(POLICIES[policy_name])
    ctx = CONTEXTS[ctx_name]
    validate_against_fleet(active, ctx.fleet)
    names = list(LEVER_NAMES) if lever_name == "all" else [lever_name]
    anchor = joint_anchor(names, active, ctx)
    same = apply_joint(names, active, anchor, ctx)
    assert same.spec_json() == active.spec_json()
    assert same.content_hash == active.content_hash


@pytest.mark.parametrize("ctx_name", sorted(CONTEXTS))
@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_anchor_is_a_point_of_the_space(policy_name, ctx_name):
    active = load_policy(POLICIES[policy_name])
    ctx = CONTEXTS[ctx_name]
    names = list(LEVER_NAMES)
    space = joint_space(names, active, ctx)
    anchor = joint_anchor(names, active, ctx)
    assert set(anchor) == set(space)
    for key, value in anchor.items():
        param = space[key]
        if param.kind == "choice":
            assert value in param.values, f"{key}={value!r} not among {param.values}"
            # the in-process executor passes choices to Optuna by repr
            assert [repr(v) for v in param.values].count(repr(value)) == 1
        else:
            assert param.lo <= value <= param.hi, f"{key}={value!r} outside {param}"


def test_top_tier_first_stays_top_tier_first():
    """The symptom of the issue, directly: the anchor is not "everything to the cheapest"."""
    active = load_policy(POLICIES["top_tier_first"])
    ctx = CONTEXTS["no_features"]
    same = apply_joint(["routing"], active, joint_anchor(["routing"], active, ctx), ctx)
    assert same.spec.routing.escalation == ["L", "M", "S"]
    naive = load_policy(POLICIES["naive_all_on_L"])
    same = apply_joint(["routing"], naive, joint_anchor(["routing"], naive, ctx), ctx)
    r = same.spec.routing
    assert (r.router, r.bias, r.thresholds) == ("score", 10.0, [0.0, 1.0])
