"""Distillation end to end on a tiny fleet (seconds of training): collected through the
gateway's collector, trained as a Ray task, pinned in a manifest copy, served by vLLM with
its hashes checked at start and gated through the gateway's request path (GatewayCore over
vLLM engines, in process); a tampered adapter is refused; an excluded family and the gate
suite never reach the training set."""

import shutil
from pathlib import Path

import pytest

from contracts.manifest import load_fleet, sha256_file
from gates.gates import pinned_weights_gate
from gates.runner import check_pinned_files
from gates.suite import load_reference_suite
from policies.policy import Policy
from serving.collector import (
    CollectorSpec,
    VerifiedCollector,
    gate_prompt_hashes,
    load_training_set,
    prompt_hash,
    training_set_dir,
)
from serving.engine import PinnedWeightsMismatch, TierEngine
from serving.testing import make_tiny_fleet
from training.distill import DistillJob, distill_family, plan_examples, run_job
from workload.tasks import generate_tasks

pytestmark = pytest.mark.integration

FAMILY, EXCLUDED = "list_ops", "expr_eval"


def _policy():
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "L"], "max_attempts": 2},
                 "cache": {"response": {"exclude_families": [EXCLUDED]}}}})


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    src = make_tiny_fleet(root / "src", tiers=("S", "L"))
    src_text = src.read_text()
    state_root = root / "state"
    blocked = gate_prompt_hashes([load_reference_suite()])
    policy = _policy()
    # The gateway's collector, opted in for both families; the policy excludes one.
    collector = VerifiedCollector.for_state(
        CollectorSpec(enabled=True, families=[FAMILY, EXCLUDED]), state_root, blocked=blocked)
    gate_case = next(c for c in load_reference_suite().cases if c.family == FAMILY)
    work = [*generate_tasks(60, seed=3, families=[FAMILY], split="train"),
            *generate_tasks(10, seed=3, families=[EXCLUDED], split="train")]
    items = [(t.family, t.prompt, t.answer) for t in work]
    items.append((FAMILY, gate_case.prompt, gate_case.expected))  # a gate case served live
    for n, (family, prompt, answer) in enumerate(items):
        collector.remember(policy, task_id=f"t{n}", attempt=1, family=family, purpose="serve",
                           prompt=prompt, text=answer, tier="L", variant="fp32", adapter=None)
        collector.report(f"t{n}", 1, True)
    examples = plan_examples(
        load_training_set(training_set_dir(state_root), FAMILY, blocked=blocked),
        family=FAMILY, blocked=blocked)
    job = DistillJob(family=FAMILY, tier="S", variant="fp32", adapter="list-ops-s-test",
                     steps=6, batch_size=8, eval_tasks=12, seed=5)
    result = distill_family(src, root / "out", job, examples, blocked=blocked, executor="ray")
    return {"root": root, "src": src, "src_text": src_text, "state": state_root,
            "examples": examples, "result": result, "job": job, "gate_case": gate_case,
            "blocked": blocked}


def test_adapter_is_pinned_in_a_copy_of_the_manifest(distilled):
    r = distilled["result"]
    assert r.executor == "ray" and r.examples == len(distilled["examples"]) > 0
    assert r.heldout == 12 and r.pass_rate_before is not None and r.pass_rate_after is not None
    fleet = load_fleet(r.manifest)
    adapter = fleet.tier("S").variant("fp32").adapter("list-ops-s-test")
    assert adapter.family == FAMILY
    assert set(adapter.files) == {"adapter_config.json", "adapter_model.safetensors"}
    for name, digest in adapter.files.items():
        assert sha256_file(f"{r.adapter_dir}/{name}") == digest == r.adapter_files[name]
    assert distilled["src"].read_text() == distilled["src_text"]  # the source is untouched
    cfg = (distilled["root"] / "out" / "distilled" / "S" / "list-ops-s-test"
           / "adapter_config.json").read_text()
    assert '"r": 16' in cfg and "/" not in cfg.split('"base_model_name_or_path"')[1][:30]


@pytest.fixture(scope="module")
def gated(distilled):
    """The candidate (family on S + adapter, then L) gated against the baseline through
    GatewayCore over the manifest copy's vLLM engines (hashes checked at start)."""
    from gates.inprocess import InProcessGateway, InProcessServingPath
    from gates.runner import GateOptions, run_gates
    from gates.suite import Suite
    from serving.engine import EngineOptions

    r = distilled["result"]
    baseline = _policy()
    candidate = baseline.evolve(author="t", distillation={
        FAMILY: {"tier": "S", "adapter": "list-ops-s-test"}})
    reference = load_reference_suite().model_dump(mode="json", by_alias=True)
    cases = [c for c in reference["cases"] if c["family"] == FAMILY][:4]
    cases += [c for c in reference["cases"] if c["family"] == EXCLUDED][:2]
    suite = Suite.model_validate({**reference, "cases": cases})
    gateway = InProcessGateway(r.manifest, {1: baseline, 2: candidate}, 1,
                               [("S", "fp32"), ("L", "fp32")],
                               engine_options=EngineOptions(max_num_seqs=4))
    try:
        served = gateway.complete({"prompt": distilled["examples"][0].prompt, "max_tokens": 8,
                                   "stop": ["\n"], "autopilot": {
                                       "task_id": "probe", "family": FAMILY,
                                       # Only gate traffic may name a stored version.
                                       "purpose": "gate", "policy_version": 2}})
        report = run_gates(candidate=candidate, baseline=baseline, fleet=load_fleet(r.manifest),
                           manifest_dir=Path(r.manifest).parent, suite=suite,
                           serving=InProcessServingPath(gateway), options=GateOptions())
    finally:
        gateway.shutdown()
    return {"served": served, "report": report, "suite": suite}


def test_vllm_serves_the_adapter_after_checking_its_hashes(gated):
    ap = gated["served"]["autopilot"]
    assert (ap["tier"], ap["adapter"]) == ("S", "list-ops-s-test")
    assert ap["output_tokens"] >= 1


def test_the_gates_validate_it_like_any_change(gated):
    report = gated["report"]
    by = {g.name: g for g in report.results}
    assert by["pinned_weights"].phase.value == "PASSED"
    assert "list-ops-s-test" in {c.adapter for c in report.file_checks}
    assert by["reproducibility"].phase.value == "PASSED"  # byte-identical reruns
    assert all(g.phase.value in ("PASSED", "FAILED", "INCONCLUSIVE") and g.message
               for g in report.results)
    first = [c for c in report.runs["candidate_run_1"].cases
             if c.case_id.startswith(FAMILY)]
    assert first and all(c.attempts[0].adapter == "list-ops-s-test" for c in first)


def test_a_tampered_adapter_is_refused_naming_the_file(distilled, tmp_path):
    r = distilled["result"]
    copy = distilled["root"] / "tampered"
    shutil.copytree(distilled["root"] / "out", copy)
    manifest = copy / "fleet.yaml"
    fleet = load_fleet(manifest)
    candidate = _policy().evolve(author="t", distillation={
        FAMILY: {"tier": "S", "adapter": "list-ops-s-test"}})
    assert pinned_weights_gate(check_pinned_files(candidate, fleet, copy)).phase.value \
        == "PASSED"
    victim = copy / "distilled" / "S" / "list-ops-s-test" / "adapter_model.safetensors"
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PinnedWeightsMismatch) as err:
        TierEngine.start(manifest, "S", "fp32")  # refused before vLLM is touched
    assert str(victim) in str(err.value)
    gate = pinned_weights_gate(check_pinned_files(candidate, fleet, copy))
    assert gate.phase.value == "FAILED" and "adapter_model.safetensors" in gate.message
    assert sha256_file(f"{r.adapter_dir}/adapter_model.safetensors") != sha256_file(victim)


def test_excluded_family_and_gate_cases_never_reach_the_training_set(distilled):
    directory = training_set_dir(distilled["state"])
    assert not (directory / f"{EXCLUDED}.jsonl").exists()
    gate_hash = prompt_hash(distilled["gate_case"].prompt)
    assert gate_hash in distilled["blocked"]
    raw = (directory / f"{FAMILY}.jsonl").read_text()
    assert gate_hash not in raw and distilled["gate_case"].prompt not in raw
    assert all(e.prompt_sha256 != gate_hash for e in distilled["examples"])


def test_the_job_is_reproducible_from_its_seed(distilled):
    r, job = distilled["result"], distilled["job"]
    fleet = load_fleet(distilled["src"])
    v = fleet.tier("S").variant("fp32")
    payload = {"job": job.model_dump(mode="json"),
               "model_dir": str(distilled["src"].parent / v.weights),
               "model_files": dict(v.files), "model_name": fleet.tier("S").model,
               "examples": [{"prompt": e.prompt, "output": e.output}
                            for e in distilled["examples"]], "heldout": []}
    again = run_job(payload, executor="inline")
    import hashlib

    assert hashlib.sha256(again["files"]["adapter_model.safetensors"]).hexdigest() == \
        r.adapter_files["adapter_model.safetensors"]
