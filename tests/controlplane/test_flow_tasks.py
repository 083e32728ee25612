"""The nightly's tasks one at a time, through ``.fn`` (no Prefect run), on a LoopContext over
a temporary state directory: given the stored state, each task records what it should."""

from __future__ import annotations

import pytest

from controlplane.bootstrap import initialise_state
from controlplane.flows import (
    decide,
    promote,
    proposal_state,
    proposed_hashes,
    record_proposal,
    release_lease,
    take_lease,
    to_awaiting,
    unfinished,
    window_acted,
)
from controlplane.loop.context import LoopContext
from controlplane.settings import AutoApprovalRule, StateDir
from store import ProposalState

WINDOW = "2026-11-20"


@pytest.fixture()
def state(tmp_path):
    state = StateDir(tmp_path / "state")
    initialise_state(state)
    state.save_settings(state.settings().model_copy(update={
        "platform_owners": ["owner"],
        "auto_approve": [AutoApprovalRule(lever="routing", max_risk="medium")]}))
    return state


class Candidate:
    """What the search hands the nightly: a policy and its lever."""

    def __init__(self, policy, lever="routing"):
        self.policy, self.lever = policy, lever


def _cheaper(active):
    spec = active.spec.model_dump(mode="json")
    spec["routing"]["max_attempts"] = active.spec.routing.max_attempts + 1
    return active.evolve(author="autopilot-search", description="test", **spec)


def _record(ctx, risk="low"):
    from contracts.prediction import Prediction

    candidate = Candidate(_cheaper(ctx.store.active_policy().policy))
    return record_proposal.fn(ctx, candidate, WINDOW,
                              Prediction(lever="routing", risk=risk,
                                         cost_per_green_pr_rel_delta=-0.1))


def test_one_context_serves_every_task_of_a_run(state):
    with LoopContext.open(state.root) as ctx:
        assert take_lease.fn(ctx, "a", 60) and not take_lease.fn(ctx, "b", 60)
        assert release_lease.fn(ctx, "a")
        assert window_acted.fn(ctx, WINDOW) is None and unfinished.fn(ctx, WINDOW) is None
        pid = _record(ctx)
        assert proposal_state.fn(ctx, pid) == ("proposed", None)
        assert proposed_hashes.fn(ctx, WINDOW) == {
            ctx.store.get_proposal(pid).candidate_hash: "already proposed"}
        assert unfinished.fn(ctx, WINDOW) == [pid]


def test_a_failed_gate_rejects_the_proposal_and_its_spec_never_comes_back(state):
    from controlplane.flows import reject

    with LoopContext.open(state.root) as ctx:
        pid = _record(ctx)
        ctx.store.record_gate(pid, "FAILED", actor="test", evidence="{}", reason="test")
        assert reject.fn(ctx, pid, "gates FAILED: rejected, never promoted") == "rejected"
        assert reject.fn(ctx, pid, "again") == "rejected"  # idempotent
        h = ctx.store.get_proposal(pid).candidate_hash
        # Another night, same baseline: the spec is refused with the reason.
        assert proposed_hashes.fn(ctx, "2026-12-24")[h] == (
            f"rejected against this baseline ({pid})")


def _own_evidence(ctx, pid, verdict="PASSED"):
    """A bundle bound to the proposal (its candidate, baseline and the pinned suite):
    promotion refuses a proposal without one (issue 14, defect 2)."""
    from gates.evidence import SCHEMA, SCHEMA_VERSION
    from gates.suite import REFERENCE_SUITE_SHA256

    p = ctx.store.get_proposal(pid)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "candidate": {"version": p.candidate_version, "content_hash": p.candidate_hash},
            "baseline": {"version": p.baseline_version, "content_hash": p.baseline_hash},
            "suite": {"name": "reference", "content_hash": REFERENCE_SUITE_SHA256},
            "gates": [], "overall": verdict, "dry_run": False}


def test_a_passed_proposal_is_approved_by_its_rule_and_promoted(state):
    with LoopContext.open(state.root) as ctx:
        pid = _record(ctx)
        ctx.store.record_gate(pid, "PASSED", actor="test", evidence=_own_evidence(ctx, pid),
                              reason="test")
        assert to_awaiting.fn(ctx, pid) == "awaiting_approval"
        assert to_awaiting.fn(ctx, pid) == "awaiting_approval"  # idempotent
        decision = decide.fn(ctx, pid, None)
        assert decision.approve and decision.via == "auto-approval"
        assert ctx.store.get_approval(pid).approver == "auto_approve[routing]"
        version = promote.fn(ctx, pid)
        assert ctx.store.active_policy().version == version != 1
        assert ctx.store.get_proposal(pid).state is ProposalState.ACTIVE
        assert window_acted.fn(ctx, WINDOW).startswith(f"window {WINDOW} already promoted")


def test_a_high_risk_proposal_waits_for_the_named_owner(state):
    with LoopContext.open(state.root) as ctx:
        pid = _record(ctx, risk="high")
        ctx.store.record_gate(pid, "PASSED", actor="test", evidence="{}", reason="test")
        to_awaiting.fn(ctx, pid)
        decision = decide.fn(ctx, pid, "owner")
        assert (decision.by, decision.via) == ("owner", "named approver")
        again = decide.fn(ctx, pid, None)  # a rerun reads the decision on record
        assert (again.by, again.via) == ("owner", "recorded")
