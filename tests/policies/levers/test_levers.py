"""Every lever's space yields valid policies: a new version of the active one, on the fleet."""

from __future__ import annotations

import random

import pytest

from policies.levers import LEVER_NAMES, LeverContext, apply_joint, joint_space, lever
from policies.policy import load_policy, validate_against_fleet
from serving.testing import tiny_manifest

ACTIVE = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 7, author: t, created: 2026-11-01T00:00:00Z}
spec:
  routing:
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    families: {bracket_fix: {thresholds: [2.0, 3.0]}}
  distillation: {list_ops: {tier: S, adapter: list-ops-v1}}
"""


@pytest.fixture(scope="module")
def setup():
    fleet = tiny_manifest()  # S int8 and M int8 variants, a list_ops adapter on S
    rng = random.Random(0)
    ctx = LeverContext(
        fleet=fleet, families=("list_ops", "bracket_fix", "expr_eval"),
        feature_sample={"difficulty": tuple(float(rng.randint(1, 3)) for _ in range(200)),
                        "size": tuple(float(rng.randint(1, 12)) for _ in range(200))},
        task_usd=tuple(rng.uniform(0.001, 0.05) for _ in range(200)),
        task_tokens=tuple(float(rng.randint(500, 9000)) for _ in range(200)))
    return fleet, load_policy(ACTIVE), ctx


@pytest.mark.parametrize("name", [*LEVER_NAMES, "all"])
def test_every_sampled_point_is_a_valid_new_version(setup, name):
    fleet, active, ctx = setup
    names = list(LEVER_NAMES) if name == "all" else [name]
    space = joint_space(names, active, ctx)
    assert space, f"lever {name} declares no parameters on a fleet with options"
    rng = random.Random(1)
    hashes = set()
    for _ in range(40):
        point = {k: p.sample(rng) for k, p in space.items()}
        policy = apply_joint(names, active, point, ctx)
        validate_against_fleet(policy, fleet)
        assert policy.metadata.version == active.metadata.version + 1
        assert policy.metadata.parent_version == active.metadata.version
        hashes.add(policy.content_hash)
    assert len(hashes) > 1, "the space never changes the policy"


def test_routing_point_sets_what_it_says(setup):
    _, active, ctx = setup
    policy = lever("routing").apply(active, {
        "escalation": "S>L", "router": "score", "w_difficulty": 0.5, "w_size": 0.0,
        "cut_0": 0.5, "cut_1": 0.9, "attempts_per_tier": 2, "max_attempts": 4,
        "exploration_rate": 0.05, "shadow_rate": 0.02}, ctx)
    r = policy.spec.routing
    assert r.escalation == ["S", "L"] and r.weights == {"difficulty": 0.5}
    assert len(r.thresholds) == 1 and r.thresholds[0] in (0.5, 1.0, 1.5)  # a sampled score
    assert (r.attempts_per_tier, r.max_attempts, r.exploration_rate, r.shadow_rate) == (
        2, 4, 0.05, 0.02)
    assert r.families == {}  # the old override's two cut points no longer fit two tiers


def test_quantization_drops_a_distillation_the_new_variant_cannot_serve(setup):
    fleet, active, ctx = setup
    policy = lever("quantization").apply(active, {"variant_S": "int8", "variant_M": "bf16"}, ctx)
    assert policy.spec.quantization == {"S": "int8"}
    assert policy.spec.distillation == {}
    validate_against_fleet(policy, fleet)


def test_distillation_ends_the_exploration_shadows_of_the_adapter_it_serves(setup):
    fleet, active, ctx = setup
    routing = active.spec.routing.model_dump(mode="json")
    routing.setdefault("families", {})["list_ops"] = {
        "shadow_rate": 0.3, "shadow_adapters": {"S": "list-ops-v1"}}
    exploring = active.evolve(author="t", routing=routing, distillation={})
    validate_against_fleet(exploring, fleet)
    policy = lever("distillation").apply(exploring, {"family_list_ops": "S/bf16/list-ops-v1"},
                                         ctx)
    assert policy.spec.distillation["list_ops"].adapter == "list-ops-v1"
    assert policy.spec.routing.families["list_ops"].shadow_adapters is None
    assert policy.spec.routing.families["list_ops"].shadow_rate == 0.3
    validate_against_fleet(policy, fleet)


def test_quantization_ends_the_exploration_shadows_of_the_variant_it_serves(setup):
    fleet, active, ctx = setup
    exploring = active.evolve(author="t", routing=active.spec.routing.model_copy(update={
        "shadow_rate": 0.3, "shadow_variants": {"S": "int8", "M": "int8"}}))
    validate_against_fleet(exploring, fleet)
    policy = lever("quantization").apply(exploring, {"variant_S": "int8", "variant_M": "bf16"},
                                         ctx)
    assert policy.spec.routing.shadow_variants == {"M": "int8"}  # S now serves int8
    validate_against_fleet(policy, fleet)


def test_unknown_lever_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown lever 'speed'.*routing"):
        lever("speed")


def test_anchor_reproduces_a_representable_active_policy(setup):
    from policies.levers import joint_anchor

    _, _, ctx = setup
    active = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 2, author: t, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [S, M, L], max_attempts: 3, exploration_rate: 0.1}
  distillation: {list_ops: {tier: S, adapter: list-ops-v1}}
  guardrails: {max_attempts_per_task: 5}
""")
    names = list(LEVER_NAMES)
    same = apply_joint(names, active, joint_anchor(names, active, ctx), ctx)
    assert same.content_hash == active.content_hash
