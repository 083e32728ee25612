from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from contracts.manifest import load_fleet
from policies import DocumentError, Policy, describe_diff, load_policy, policy_diff
from policies.policy import save_policy, validate_against_fleet

STARTER = "controlplane/starter/"


def make(routing=None, **spec) -> Policy:
    return Policy.model_validate(
        {
            "metadata": {"version": 1, "author": "alice", "created": datetime(2026, 1, 1)},
            "spec": {"routing": routing or {"escalation": ["S", "M", "L"]}, **spec},
        }
    )


def test_hash_is_spec_only_and_canonical():
    a = make()
    b = Policy.model_validate(
        {
            "metadata": {"version": 7, "author": "bob", "created": datetime.now(UTC)},
            "spec": {"routing": {"escalation": ["S", "M", "L"]}},
        }
    )
    assert a.content_hash == b.content_hash
    assert len(a.content_hash) == 64
    assert make(routing={"escalation": ["S", "M", "L"], "max_attempts": 2}).content_hash != a.content_hash


def test_hash_survives_yaml_round_trip(tmp_path):
    p = load_policy(STARTER + "policy.yaml")
    save_policy(p, tmp_path / "p.yaml")
    again = load_policy(tmp_path / "p.yaml")
    assert again == p and again.content_hash == p.content_hash


def test_policy_is_frozen():
    p = make()
    with pytest.raises(ValidationError, match="frozen"):
        p.spec.routing.max_attempts = 9  # type: ignore[misc]


def test_evolve_makes_new_version_with_parent():
    p = make()
    q = p.evolve(author="bot", routing={"escalation": ["S", "L"], "max_attempts": 2})
    assert (q.metadata.version, q.metadata.parent_version) == (2, 1)
    assert q.content_hash != p.content_hash


def test_diff_lists_leaf_changes_in_words():
    p = make()
    q = p.evolve(
        author="bot",
        routing={"escalation": ["S", "M"], "max_attempts": 2},
        quantization={"M": "int8"},
    )
    assert policy_diff(p, p) == []
    lines = describe_diff(p, q)
    assert "spec.routing.escalation: [S, M, L] -> [S, M]" in lines
    assert "spec.routing.max_attempts: 3 -> 2" in lines
    assert "spec.quantization.M: set to int8" in lines


@pytest.mark.parametrize(
    "yaml_spec, field, needle",
    [
        ("routing: {escalation: [S], max_attempts: 0}", "spec.routing.max_attempts", "got 0"),
        ("routing: {escalation: [S], colour: red}", "spec.routing.colour", "unknown field"),
        ("routing: {escalation: []}", "spec.routing.escalation", "got []"),
        ("routing: {escalation: [S, S]}", "spec.routing.escalation", "repeated: S"),
        ("routing: {escalation: [S, M], thresholds: [2, 1]}", "spec.routing.thresholds", "ascending"),
        ("routing: {escalation: [S], exploration_rate: 0.9}", "spec.routing.exploration_rate", "0.9"),
        ("", "spec.routing", "required"),
    ],
)
def test_validation_names_field_and_value(yaml_spec, field, needle):
    text = (
        "apiVersion: autopilot/v1\nkind: Policy\n"
        "metadata: {version: 1, author: a, created: 2026-01-01}\n"
        f"spec: {{{yaml_spec}}}\n"
    )
    with pytest.raises(DocumentError) as exc:
        load_policy(text)
    problems = dict(exc.value.problems)
    assert field in problems, exc.value
    assert needle in problems[field]


def test_thresholds_must_match_escalation_length():
    with pytest.raises(DocumentError) as exc:
        load_policy(
            "metadata: {version: 1, author: a, created: 2026-01-01}\n"
            "spec: {routing: {escalation: [S, M, L], thresholds: [1.0]}}\n"
        )
    assert "needs 2 cut points" in str(exc.value)


def test_not_yaml_and_not_mapping_are_refused():
    with pytest.raises(DocumentError, match="not valid YAML"):
        load_policy("spec: [unclosed\n  - x")
    with pytest.raises(DocumentError, match="expected a mapping"):
        load_policy("- just\n- a list\n")


def test_parent_must_be_older():
    with pytest.raises(DocumentError, match="parent_version"):
        load_policy(
            "metadata: {version: 2, parent_version: 2, author: a, created: 2026-01-01}\n"
            "spec: {routing: {escalation: [S]}}\n"
        )


def test_validate_against_fleet_names_unknown_tier_variant_adapter():
    fleet = load_fleet(STARTER + "fleet.yaml")
    validate_against_fleet(load_policy(STARTER + "policy.yaml"), fleet)
    bad = make(
        routing={"escalation": ["S", "XL"]},
        quantization={"M": "int3"},
        distillation={"list_ops": {"tier": "S", "adapter": "nope"}},
    )
    with pytest.raises(DocumentError) as exc:
        validate_against_fleet(bad, fleet)
    problems = dict(exc.value.problems)
    assert "unknown tier 'XL'" in problems["spec.routing.escalation.1"]
    assert "unknown variant 'int3'" in problems["spec.quantization.M"]
    assert "no adapter 'nope'" in problems["spec.distillation.list_ops.adapter"]


def test_shadow_variants_name_a_variant_the_tier_has_and_the_policy_does_not_serve():
    from serving.testing import tiny_manifest
    from serving.tiers import DeploymentKey, required_deployments

    fleet = tiny_manifest("variants")  # S and M have int8
    good = make(routing={"escalation": ["S", "L"], "shadow_rate": 0.2,
                         "shadow_variants": {"S": "int8"}})
    validate_against_fleet(good, fleet)
    assert DeploymentKey("S", "int8", False) in required_deployments(good, fleet)
    assert "shadow_variants" not in make(routing={"escalation": ["S"]}).spec_json()["routing"]
    bad = make(routing={"escalation": ["S", "L"], "shadow_variants": {"S": "bf16", "M": "int3"}})
    with pytest.raises(DocumentError) as exc:
        validate_against_fleet(bad, fleet)
    problems = dict(exc.value.problems)
    assert "shows nothing new" in problems["spec.routing.shadow_variants.S"]
    assert "unknown variant 'int3'" in problems["spec.routing.shadow_variants.M"]


def test_shadow_adapters_name_an_adapter_the_tier_has_and_the_family_is_not_served():
    from policies.routing import resolve_routing, shadow_adapter, shadow_targets
    from serving.testing import tiny_manifest

    fleet = tiny_manifest()  # S has the list-ops-v1 adapter
    good = make(routing={"escalation": ["S", "L"], "families": {
        "list_ops": {"shadow_rate": 0.3, "shadow_adapters": {"S": "list-ops-v1"}}}})
    validate_against_fleet(good, fleet)
    routing = resolve_routing(good, "list_ops")
    assert shadow_adapter(routing, "S") == "list-ops-v1"
    assert shadow_targets(routing, "S") == ["S", "L"]  # beside an S attempt, on S itself
    other = resolve_routing(good, "bracket_fix")  # another family's shadows: no adapter
    assert shadow_adapter(other, "S") is None and shadow_targets(other, "S") == ["L"]
    assert "shadow_adapters" not in good.spec_json()["routing"]["families"].get("x", {})
    assert "shadow_adapters" not in make(routing={"escalation": ["S"], "families": {
        "list_ops": {"shadow_rate": 0.1}}}).spec_json()["routing"]["families"]["list_ops"]
    bad = make(routing={"escalation": ["S", "L"], "families": {
        "list_ops": {"shadow_adapters": {"S": "list-ops-v1", "L": "list-ops-v1"}},
        "other": {"shadow_adapters": {"S": "nope"}}}},
        distillation={"list_ops": {"tier": "S", "adapter": "list-ops-v1"}})
    with pytest.raises(DocumentError) as exc:
        validate_against_fleet(bad, fleet)
    problems = dict(exc.value.problems)
    assert "shows nothing new" in problems["spec.routing.families.list_ops.shadow_adapters.S"]
    assert "no adapter 'list-ops-v1'" in problems[
        "spec.routing.families.list_ops.shadow_adapters.L"]
    assert "no adapter 'nope'" in problems["spec.routing.families.other.shadow_adapters.S"]
