"""The verify step over a real store and simulated telemetry: keep, verify or roll back."""

from __future__ import annotations

import pytest

from contracts.manifest import load_fleet
from controlplane.bootstrap import initialise_state
from controlplane.loop.verify_adapter import verify_promoted
from controlplane.settings import StateDir
from store import Decision, GateVerdict, ProposalState, Store
from telemetry.ingest import ingest_paths
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans


def promote_and_serve(tmp_path, candidate_routing):
    state = StateDir(tmp_path / "state")
    initialise_state(state)
    fleet = load_fleet(state.fleet_path)
    store = Store.open(state.store_url())
    v1 = store.active_policy().policy
    v2 = v1.evolve(author="autopilot-nightly", routing=candidate_routing(v1))
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window="2026-11-20", actor="autopilot-nightly",
                              predicted={"cost_per_green_pr_rel_delta": -0.1})
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates")
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="n")
    store.record_decision(p.proposal_id, approver="alice", decision=Decision.APPROVE, reason="ok")
    store.promote(p.proposal_id, actor="n", reason="approved")
    for day, policy, seed in (("2026-11-20", v1, 1), ("2026-11-21", v2, 2)):
        f = state.spans_dir / f"{day}.jsonl"
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=1500, day=day, seed=seed)), f)
        ingest_paths([f], state.telemetry_dir)
    return state, store, fleet, p.proposal_id


def test_a_costlier_candidate_is_rolled_back(tmp_path):
    state, store, fleet, pid = promote_and_serve(
        tmp_path, lambda v1: v1.spec.routing.model_copy(update={"escalation": ["L", "M", "S"]}))
    result = verify_promoted(state, store, fleet, since="2026-11-21", until="2026-11-21",
                             actor="autopilot-verify")
    assert result["outcome"] == "roll_back", result["message"]
    assert store.active_policy().version == 1
    assert store.get_proposal(pid).state == ProposalState.ROLLED_BACK
    assert store.audit_entries(subject=pid, action="verify.look")
    assert store.verify_audit().ok


def test_nothing_to_verify_without_an_active_proposal(tmp_path):
    state = StateDir(tmp_path / "s")
    initialise_state(state)
    store = Store.open(state.store_url())
    out = verify_promoted(state, store, load_fleet(state.fleet_path), since=None, until=None,
                          actor="v")
    assert out["proposal_id"] is None


@pytest.mark.parametrize("look_twice", [True])
def test_same_policy_is_not_rolled_back(tmp_path, look_twice):
    state, store, fleet, pid = promote_and_serve(
        tmp_path, lambda v1: v1.spec.routing.model_copy(update={"max_attempts": 4}))
    result = verify_promoted(state, store, fleet, since="2026-11-21", until="2026-11-21",
                             actor="autopilot-verify")
    assert result["outcome"] in ("verified", "keep_watching"), result["message"]
    assert store.active_policy().version == 2
