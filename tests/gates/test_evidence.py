"""Evidence bundles: content, a hash stable across reruns, storage in the store and on disk."""

import hashlib
import json

from gates_testkit import competent, make_policy

from contracts.manifest import load_fleet
from gates.evidence import build_bundle, compute_bundle_hash, hashable_view, record_evidence
from gates.fakes import FakeServingPath
from gates.runner import GateOptions, run_gates
from store import Store


def report_for(fleet_path, suite, candidate, baseline, latency=10.0, **fake):
    serving = FakeServingPath(policies={1: baseline, candidate.metadata.version: candidate},
                              answer=competent, latency_ms=lambda case, tier: latency, **fake)
    return run_gates(candidate=candidate, baseline=baseline, fleet=load_fleet(fleet_path),
                     manifest_dir=fleet_path.parent, suite=suite, serving=serving,
                     options=GateOptions(cache_sample=5))


SOFTWARE = {"python": "3.11", "vllm": "x", "torch": "y", "ray": "z"}


def test_bundle_names_everything_the_contract_lists(fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, quantization={"M": "int4"})
    bundle = build_bundle(report_for(fleet_path, suite, cand, base),
                          fleet_manifest_path=fleet_path)
    assert bundle["candidate"] == {"version": 2, "content_hash": cand.content_hash}
    assert bundle["baseline"]["content_hash"] == base.content_hash
    assert bundle["fleet"]["content_hash"] == load_fleet(fleet_path).content_hash
    assert bundle["fleet"]["manifest_file_sha256"] == hashlib.sha256(
        fleet_path.read_bytes()).hexdigest()
    assert bundle["suite"] == {"name": suite.metadata.name, "content_hash": suite.content_hash,
                               "cases": 90}
    assert {w["tier"] + "/" + w["variant"] for w in bundle["weights"]} == {"S/bf16", "M/int4",
                                                                            "L/bf16"}
    assert all(len(w["actual_sha256"]) == 64 for w in bundle["weights"])
    runs = bundle["runs"]
    assert set(runs) == {"candidate_run_1", "candidate_run_2", "baseline"}
    case = runs["candidate_run_1"]["cases"][suite.cases[0].id]
    assert len(case["output_hash"]) == 64 and case["status"] == "pass"
    assert [g["name"] for g in bundle["gates"]] == [
        "pinned_weights", "reproducibility", "quality_non_inferiority", "cost_latency",
        "cache_safety", "guardrails"]
    assert bundle["gates"][2]["stats"]["cases"] == 90
    assert {"python", "vllm", "torch", "ray"} <= set(bundle["software"])
    assert bundle["timestamps"]["started"] <= bundle["timestamps"]["finished"]


def test_bundle_hash_is_stable_across_reruns_apart_from_timestamps(fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, cache={"response": {"enabled": True}})
    first = build_bundle(report_for(fleet_path, suite, cand, base, latency=10.0),
                         software=SOFTWARE)
    second = build_bundle(report_for(fleet_path, suite, cand, base, latency=55.0),
                          software=SOFTWARE)
    assert first["timestamps"] != second["timestamps"]
    assert first["timing"] != second["timing"]  # latencies were measured differently
    assert first["bundle_hash"] == second["bundle_hash"]
    assert hashable_view(first) == hashable_view(second)
    # ...and any change of substance changes it.
    tampered = json.loads(json.dumps(first))
    tampered["runs"]["candidate_run_1"]["cases"][suite.cases[0].id]["output_hash"] = "0" * 64
    assert compute_bundle_hash(tampered) != first["bundle_hash"]
    tampered = json.loads(json.dumps(first))
    tampered["gates"][3]["phase"] = "FAILED"  # a timing gate's phase stays hashed
    assert compute_bundle_hash(tampered) != first["bundle_hash"]


def test_bundle_hash_differs_when_the_outcome_differs(fleet_path, suite):
    base = make_policy(1)
    same = build_bundle(report_for(fleet_path, suite, base, base), software=SOFTWARE)
    flaky = build_bundle(report_for(fleet_path, suite, base, base,
                                    flaky_cases=frozenset({suite.cases[0].id})),
                         software=SOFTWARE)
    assert same["bundle_hash"] != flaky["bundle_hash"]


def test_record_evidence_in_store_on_disk_and_in_the_audit_log(tmp_path, fleet_path, suite):
    base = make_policy(1)
    store = Store.for_state_dir(tmp_path / "state")
    store.put_policy(base)
    bundle = build_bundle(report_for(fleet_path, suite, base, base))
    recorded = record_evidence(store, bundle, evidence_dir=tmp_path / "state/reports/evidence")
    text = recorded.path.read_text(encoding="utf-8")
    assert recorded.path.name == f"{recorded.sha256}.json"
    assert hashlib.sha256(text.encode()).hexdigest() == recorded.sha256
    stored = store.get_evidence(recorded.sha256)
    assert stored.json_text == text and stored.candidate_hash == base.content_hash
    entries = store.audit_entries(action="gate.run")
    assert len(entries) == 1
    payload = entries[0].payload
    assert payload["bundle_hash"] == bundle["bundle_hash"]
    assert payload["evidence_sha256"] == recorded.sha256
    assert payload["gates"]["reproducibility"] == "PASSED"
    assert store.audit_entries(action="evidence.put")[0].payload["sha256"] == recorded.sha256
    assert store.verify_audit().ok


def test_record_evidence_on_a_proposal_moves_it_to_gated(tmp_path, fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, quantization={"M": "int4", "L": "int4"})
    store = Store.for_state_dir(tmp_path / "state")
    store.put_policy(base)
    store.activate(1, actor="t", reason="init")
    store.put_policy(cand)
    proposal = store.create_proposal(candidate_version=2, baseline_version=1, lever="quant",
                                     window="2026-11-20", actor="t")
    bundle = build_bundle(report_for(fleet_path, suite, cand, base))
    assert bundle["overall"] == "FAILED"
    recorded = record_evidence(store, bundle, evidence_dir=tmp_path / "ev",
                               proposal_id=proposal.proposal_id)
    after = store.get_proposal(proposal.proposal_id)
    assert after.state.value == "gated" and after.gate_verdict.value == "FAILED"
    assert after.evidence_hash == recorded.sha256


def test_dry_run_records_without_moving_the_proposal(tmp_path, fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, quantization={"M": "int4"})
    store = Store.for_state_dir(tmp_path / "state")
    for p in (base, cand):
        store.put_policy(p)
    store.activate(1, actor="t", reason="init")
    proposal = store.create_proposal(candidate_version=2, baseline_version=1, lever="quant",
                                     window="w", actor="t")
    report = report_for(fleet_path, suite, cand, base)
    from dataclasses import replace

    report = replace(report, dry_run=True)
    assert not report.blocking
    bundle = build_bundle(report)
    recorded = record_evidence(store, bundle, evidence_dir=tmp_path / "ev",
                               proposal_id=proposal.proposal_id)
    assert store.get_proposal(proposal.proposal_id).state.value == "proposed"
    assert store.evidence_for(proposal.proposal_id)[0].sha256 == recorded.sha256
