"""Progressive delivery in the store: start, advance, complete or abort a canary."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.policy import load_policy
from store import GateVerdict, PromotionRefused, ProposalState, Store, StoreError

STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"


@pytest.fixture
def store(tmp_path):
    with Store.for_state_dir(tmp_path / "state") as s:
        yield s


def _approved(store: Store, version: int = 2, window: str = "2026-12-01"):
    v1 = load_policy(STARTER)
    if store.active_policy() is None:
        store.put_policy(v1)
        store.activate(1, actor="init", reason="initial policy")
    active = store.active_policy()
    candidate = active.policy
    for _ in range(version - 1):  # distinct version numbers for distinct candidates
        candidate = candidate.evolve(author="autopilot", quantization={"S": f"int{version}"})
    store.put_policy(candidate)
    p = store.create_proposal(candidate_version=candidate.metadata.version,
                              baseline_version=active.version, lever="routing", window=window,
                              predicted={"cost_per_green_pr_rel_delta": -0.2}, actor="autopilot")
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates")
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="ok")
    return p


def test_a_canary_runs_beside_the_active_policy_then_promotes(store):
    p = _approved(store)
    r = store.start_rollout(p.proposal_id, share=0.25, actor="nightly", reason="step 1")
    assert (r.share, r.step, r.state) == (0.25, 1, "running")
    assert store.current_rollout() == r
    assert store.active_policy().version == 1  # the active pointer has not moved
    assert store.get_proposal(p.proposal_id).state == ProposalState.CANARY
    # Starting again is a no-op (a rerun of the night).
    assert store.start_rollout(p.proposal_id, share=0.25, actor="nightly", reason="again") == r

    r = store.advance_rollout(p.proposal_id, share=0.5, actor="verify", reason="no regression")
    assert (r.share, r.step) == (0.5, 2)
    with pytest.raises(StoreError, match="raises the share"):
        store.advance_rollout(p.proposal_id, share=0.5, actor="verify", reason="same")

    activation = store.complete_rollout(p.proposal_id, actor="verify", reason="all steps held")
    assert activation.version == p.candidate_version == store.active_policy().version
    assert store.get_proposal(p.proposal_id).state == ProposalState.ACTIVE
    assert store.current_rollout() is None
    assert store.get_rollout(p.proposal_id).state == "completed"
    actions = [e.action for e in store.audit_entries(subject=p.proposal_id)]
    assert "proposal.canary" in actions and "rollout.advance" in actions
    assert store.verify_audit().ok


def test_an_aborted_canary_leaves_the_active_policy_and_ends_rolled_back(store):
    p = _approved(store)
    store.start_rollout(p.proposal_id, share=0.1, actor="nightly", reason="step 1")
    r = store.abort_rollout(p.proposal_id, actor="verify", reason="regression at 10%")
    assert r.state == "aborted" and store.current_rollout() is None
    assert store.active_policy().version == 1
    assert store.get_proposal(p.proposal_id).state == ProposalState.ROLLED_BACK
    with pytest.raises(StoreError, match="no running rollout"):
        store.complete_rollout(p.proposal_id, actor="verify", reason="too late")


def test_one_rollout_at_a_time_and_only_from_an_approved_proposal_on_the_active_baseline(store):
    first = _approved(store)
    second = _approved(store, version=3, window="2026-12-02")
    store.start_rollout(first.proposal_id, share=0.1, actor="nightly", reason="step 1")
    with pytest.raises(PromotionRefused, match="still running"):
        store.start_rollout(second.proposal_id, share=0.1, actor="nightly", reason="step 1")
    store.complete_rollout(first.proposal_id, actor="verify", reason="done")
    # The second was gated against v1, but the first's candidate is active now.
    with pytest.raises(PromotionRefused, match="is active now"):
        store.start_rollout(second.proposal_id, share=0.1, actor="nightly", reason="step 1")
    with pytest.raises(StoreError, match=r"share must be in \(0, 1\]"):
        store.start_rollout(second.proposal_id, share=0.0, actor="nightly", reason="x")
