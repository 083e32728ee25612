"""The distillation lever's pure parts: settings, exclusions, the candidate policy, the
training set plan and the manifest copy."""

import json
from pathlib import Path

import pytest

from contracts.documents import DocumentError
from contracts.manifest import load_fleet, sha256_file, verify_files
from controlplane.loop.distill import (
    DistillSettings,
    candidate_policy,
    excluded_families,
    training_budget_allows,
)
from controlplane.settings import Settings
from policies.policy import Policy
from policies.routing import tier_plan
from serving.collector import VerifiedExample, prompt_hash
from training.distill import adapter_name_for, heldout_tasks, plan_examples, register_adapter

STARTER = "controlplane/starter/fleet.yaml"


def active(exclude=()):
    return Policy.model_validate({
        "metadata": {"version": 4, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M", "L"],
                             "max_attempts": 3},
                 "cache": {"response": {"exclude_families": list(exclude)}}}})


@pytest.fixture()
def fleet_with_adapter(tmp_path):
    """The starter manifest copied with a (fake) adapter registered on S."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "fleet.yaml").write_text(Path(STARTER).read_text())
    adapter = tmp_path / "work" / "a1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    out = register_adapter(src / "fleet.yaml", tmp_path / "copy" / "fleet.yaml", tier="S",
                           variant=load_fleet(src / "fleet.yaml").tier("S").variant().name,
                           adapter="list-ops-s-1", adapter_dir=adapter, family="list_ops")
    return src / "fleet.yaml", out, adapter


def test_settings_default_off_and_load_from_yaml():
    s = Settings()
    assert not s.distillation.collect.enabled and not s.distillation.nightly
    loaded = Settings.model_validate({"distillation": {
        "collect": {"enabled": True, "families": ["list_ops"]}, "nightly": True,
        "steps": 100, "nightly_step_budget": 200}})
    assert loaded.distillation.collect.families == ["list_ops"]
    assert training_budget_allows(loaded.distillation, 100)
    assert not training_budget_allows(loaded.distillation, 300)
    assert not training_budget_allows(DistillSettings(), 1)  # nightly off


def test_exclusions_come_from_policy_and_settings():
    ds = DistillSettings.model_validate({"collect": {"exclude_families": ["var_trace"]}})
    assert excluded_families(active(["list_ops"]), ds) == {"list_ops", "var_trace"}


def test_register_adapter_writes_a_pinned_copy_and_leaves_the_source(fleet_with_adapter):
    src, out, adapter = fleet_with_adapter
    before = src.read_text()
    copy = load_fleet(out)
    a = copy.tier("S").variant().adapter("list-ops-s-1")
    assert a.family == "list_ops"
    assert a.files == {n: sha256_file(adapter / n) for n in
                       ("adapter_config.json", "adapter_model.safetensors")}
    assert verify_files(out.parent / a.path, a.files) == []
    assert src.read_text() == before  # never written
    with pytest.raises(Exception, match="writes a copy"):
        register_adapter(out, out, tier="S", variant=copy.tier("S").variant().name,
                         adapter="x", adapter_dir=adapter, family="list_ops")


def test_candidate_policy_starts_the_family_on_the_adapter_and_escalates_as_before(
        fleet_with_adapter):
    _, out, _ = fleet_with_adapter
    fleet = load_fleet(out)
    p = candidate_policy(active(), fleet, family="list_ops", tier="S", adapter="list-ops-s-1")
    assert p.metadata.version == 5 and p.metadata.parent_version == 4
    plan = tier_plan(p, "list_ops", {})
    assert [(a.tier, a.adapter) for a in plan] == [("S", "list-ops-s-1"), ("M", None),
                                                   ("L", None)]
    assert [a.tier for a in tier_plan(p, "expr_eval", {})] == ["S", "M", "L"]
    with pytest.raises(DocumentError, match="no adapter 'nope'"):
        candidate_policy(active(), fleet, family="list_ops", tier="S", adapter="nope")


def test_training_plan_dedupes_drops_gate_and_heldout_prompts_in_a_fixed_order():
    ex = [VerifiedExample.make("list_ops", f"sort: [{i}]\n=", f"[{i}]") for i in range(6)]
    ex += [VerifiedExample.make("list_ops", "sort: [0]\n=", "[0]"),  # duplicate prompt
           VerifiedExample.make("expr_eval", "eval: 1\n=", "1")]  # another family
    blocked = frozenset({prompt_hash("sort: [1]\n=")})
    heldout = frozenset({prompt_hash("sort: [2]\n=")})
    plan = plan_examples(reversed(ex), family="list_ops", blocked=blocked, exclude=heldout)
    assert [e.prompt for e in plan] == [e.prompt for e in sorted(
        (e for e in ex[:6] if e.prompt not in ("sort: [1]\n=", "sort: [2]\n=")),
        key=lambda e: e.prompt_sha256)]
    assert len(plan_examples(ex, family="list_ops", blocked=blocked, max_examples=2)) == 2
    name = adapter_name_for("list_ops", "S", "ab" * 32, 0)
    assert name.startswith("list-ops-s-") and name != adapter_name_for("list_ops", "S",
                                                                        "ab" * 32, 1)


def test_heldout_tasks_avoid_excluded_prompts():
    tasks = heldout_tasks("list_ops", 30, seed=1, exclude=frozenset())
    assert len(tasks) == 30 and len({t.prompt for t in tasks}) == 30
    skip = frozenset(prompt_hash(t.prompt) for t in tasks[:10])
    again = heldout_tasks("list_ops", 30, seed=1, exclude=skip)
    assert not {t.prompt for t in again} & {t.prompt for t in tasks[:10]}
    assert heldout_tasks("not_a_reference_family", 5, seed=1, exclude=frozenset()) == []


def test_nightly_step_is_off_by_default_and_held_to_its_budget(tmp_path):
    from controlplane.loop.distill import nightly_distill
    from controlplane.settings import StateDir

    state = StateDir(tmp_path)
    assert nightly_distill(state, "2026-11-20", "2026-11-20") == {
        "skipped": "distillation.nightly is off"}
    state.save_settings(Settings.model_validate({"distillation": {
        "nightly": True, "steps": 900, "nightly_step_budget": 600}}))
    assert "exceed the nightly budget" in nightly_distill(state, "2026-11-20",
                                                          "2026-11-20")["skipped"]
