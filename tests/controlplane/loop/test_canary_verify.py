"""A canary judged against its control on the same day: stopped at the canary when worse,
advanced then promoted when it holds (real store, simulated telemetry)."""

from __future__ import annotations

from contracts.manifest import load_fleet
from controlplane.bootstrap import initialise_state
from controlplane.loop.verify_adapter import verify_promoted
from controlplane.settings import StateDir
from store import Decision, GateVerdict, ProposalState, Store
from telemetry.ingest import ingest_paths
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

DAY = "2026-11-21"


def canary_day(tmp_path, candidate_routing, *, steps=(0.25, 1.0)):
    state = StateDir(tmp_path / "state")
    initialise_state(state)
    settings = state.settings()
    state.save_settings(settings.model_copy(update={"rollout": settings.rollout.model_copy(
        update={"steps": list(steps), "min_tasks": 150})}))
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
    store.start_rollout(p.proposal_id, share=steps[0], actor="n", reason="canary")
    # The same day: the control serves most tasks, the canary its share.
    for name, policy, seed, tasks in (("control", v1, 1, 1200), ("canary", v2, 2, 400)):
        f = state.spans_dir / f"{DAY}-{name}.jsonl"
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, day=DAY,
                                                                seed=seed)), f)
        ingest_paths([f], state.telemetry_dir)
    return state, store, fleet, p.proposal_id


def test_a_worse_canary_is_stopped_and_the_active_policy_never_moved(tmp_path):
    state, store, fleet, pid = canary_day(
        tmp_path, lambda v1: v1.spec.routing.model_copy(update={
            "escalation": ["S"], "thresholds": [], "router": "fixed", "max_attempts": 1,
            "families": {}}))
    result = verify_promoted(state, store, fleet, since=DAY, until=DAY,
                             actor="autopilot-verify")
    assert result["canary"] and result["outcome"] == "abort", result["message"]
    assert "canary stopped at 25%" in result["message"]
    assert store.active_policy().version == 1 and store.current_rollout() is None
    assert store.get_proposal(pid).state == ProposalState.ROLLED_BACK
    look = store.audit_entries(subject=pid, action="rollout.look")
    assert look and look[0].payload["action"] == "abort"
    assert store.calibration_records()  # the canary look is checked against the prediction
    assert store.verify_audit().ok


def test_a_canary_that_holds_advances_then_is_promoted(tmp_path):
    state, store, fleet, pid = canary_day(
        tmp_path, lambda v1: v1.spec.routing.model_copy(update={"max_attempts": 4}),
        steps=(0.25, 0.5, 1.0))
    first = verify_promoted(state, store, fleet, since=DAY, until=DAY, actor="verify")
    assert first["outcome"] == "advance", first["message"]
    assert store.current_rollout().share == 0.5
    second = verify_promoted(state, store, fleet, since=DAY, until=DAY, actor="verify")
    assert second["outcome"] == "complete", second["message"]
    assert store.active_policy().version == 2 == second["active_version"]
    assert store.get_proposal(pid).state == ProposalState.ACTIVE
    assert store.current_rollout() is None
