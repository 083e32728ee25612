"""A gate verdict is bound to the proposal it judged (issue 14, defect 2).

The store refuses a bundle on a proposal whose candidate or baseline hash it does not name,
a bundle whose overall verdict is not the one recorded, and a dry run's bundle as a verdict;
at promotion it checks the recorded bundle again, in the same transaction, and a mismatch
leaves the previous policy active.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from contracts.documents import canonical_json
from policies.policy import Policy
from store import (
    Decision,
    EvidenceMismatch,
    GateVerdict,
    PromotionRefused,
    ProposalState,
    Store,
    StoreError,
)
from store.schema import evidence, proposals

SCHEMA = "autopilot.gate-evidence"


def bundle(candidate: Policy, baseline: Policy, overall: str = "PASSED", **extra) -> dict:
    return {"schema": SCHEMA, "schema_version": 2,
            "candidate": {"version": candidate.metadata.version,
                          "content_hash": candidate.content_hash},
            "baseline": {"version": baseline.metadata.version,
                         "content_hash": baseline.content_hash},
            "suite": {"name": "reference", "content_hash": "ab" * 32},
            "gates": [], "overall": overall, "dry_run": False, **extra}


def proposal(store: Store, candidate: int, window: str = "2026-11-20") -> str:
    return store.create_proposal(candidate_version=candidate, baseline_version=1,
                                 lever="quantization", window=window,
                                 actor="autopilot").proposal_id


def test_a_verdict_on_another_candidate_is_refused_naming_both_hashes(store, policies):
    p = proposal(store, 2)
    proposal(store, 3, window="2026-11-21")
    before = len(store.audit_entries())
    # The gates judged v3; recording that verdict on P (whose candidate is v2) is refused.
    with pytest.raises(EvidenceMismatch) as refused:
        store.record_gate(p, GateVerdict.PASSED, actor="gates",
                          evidence=bundle(policies[3], policies[1]))
    message = str(refused.value)
    assert policies[3].content_hash[:12] in message and policies[2].content_hash[:12] in message
    assert "candidate" in message and p in message
    assert isinstance(refused.value, StoreError)  # a PermanentError: never retried
    record = store.get_proposal(p)
    assert record.state is ProposalState.PROPOSED and record.gate_verdict is None
    assert store.evidence_for(p) == [] and len(store.audit_entries()) == before


def test_a_verdict_against_another_baseline_is_refused(store, policies):
    p = proposal(store, 2)
    with pytest.raises(EvidenceMismatch, match="baseline") as refused:
        store.record_gate(p, GateVerdict.PASSED, actor="gates",
                          evidence=bundle(policies[2], policies[3]))
    assert policies[3].content_hash[:12] in str(refused.value)
    assert policies[1].content_hash[:12] in str(refused.value)


def test_a_gate_bundle_that_names_no_baseline_is_refused(store, policies):
    p = proposal(store, 2)
    unbound = bundle(policies[2], policies[1])
    del unbound["baseline"]
    with pytest.raises(EvidenceMismatch, match="names no baseline hash"):
        store.record_gate(p, GateVerdict.PASSED, actor="gates", evidence=unbound)


def test_the_verdict_must_be_the_bundles_own(store, policies):
    p = proposal(store, 2)
    with pytest.raises(EvidenceMismatch, match="overall verdict is FAILED, not PASSED"):
        store.record_gate(p, GateVerdict.PASSED, actor="gates",
                          evidence=bundle(policies[2], policies[1], overall="FAILED"))
    with pytest.raises(EvidenceMismatch, match="dry run"):
        store.record_gate(p, GateVerdict.PASSED, actor="gates",
                          evidence=bundle(policies[2], policies[1], dry_run=True))
    gated = store.record_gate(p, GateVerdict.PASSED, actor="gates",
                              evidence=bundle(policies[2], policies[1]))
    assert gated.state is ProposalState.GATED and gated.evidence_hash is not None


def test_evidence_linked_without_a_verdict_is_checked_too(store, policies):
    p = proposal(store, 2)
    with pytest.raises(EvidenceMismatch):
        store.put_evidence(bundle(policies[3], policies[1], dry_run=True), actor="gates",
                           proposal_id=p)
    early = store.put_evidence(bundle(policies[3], policies[1]), actor="gates",
                               candidate_hash=policies[3].content_hash)
    with pytest.raises(EvidenceMismatch):  # stored early for v3, never linked to P
        store.put_evidence(early.json_text, actor="gates", proposal_id=p)


def _approved(store: Store, policies: dict[int, Policy]) -> str:
    p = proposal(store, 2)
    store.record_gate(p, GateVerdict.PASSED, actor="gates",
                      evidence=bundle(policies[2], policies[1]))
    store.transition_proposal(p, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    store.record_decision(p, approver="owner", decision=Decision.APPROVE, reason="ok")
    return p


def _point_evidence_at(raw: sa.Engine, proposal_id: str, data: dict, candidate_hash: str) -> str:
    """What a database written before the fix (or an operator's edit) can hold: the
    proposal's evidence is another candidate's bundle."""
    text = canonical_json(data)
    sha = hashlib.sha256(text.encode()).hexdigest()
    with raw.begin() as conn:
        conn.execute(sa.insert(evidence).values(sha256=sha, candidate_hash=candidate_hash,
                                                proposal_id=proposal_id, json_text=text,
                                                stored_at=datetime.now(UTC)))
        conn.execute(sa.update(proposals).where(proposals.c.proposal_id == proposal_id)
                     .values(evidence_hash=sha))
    return sha


def test_promotion_checks_the_binding_again_and_keeps_the_active_policy(store, raw, policies):
    p = _approved(store, policies)
    record = store.get_proposal(p)
    _point_evidence_at(raw, p, bundle(policies[3], policies[1]), record.candidate_hash)
    with pytest.raises(PromotionRefused, match="does not back it") as refused:
        store.promote(p, actor="owner", reason="approved")
    assert policies[3].content_hash[:12] in str(refused.value)
    assert "policy v1 stays active" in str(refused.value)
    assert store.active_policy().version == 1
    assert store.get_proposal(p).state is ProposalState.APPROVED


def test_promotion_refuses_evidence_whose_verdict_is_not_the_recorded_one(store, raw, policies):
    p = _approved(store, policies)
    _point_evidence_at(raw, p, bundle(policies[2], policies[1], overall="FAILED"),
                       policies[2].content_hash)
    with pytest.raises(PromotionRefused, match="overall verdict is FAILED, not PASSED"):
        store.promote(p, actor="owner", reason="approved")
    assert store.active_policy().version == 1


def test_a_bound_proposal_promotes(store, policies):
    p = _approved(store, policies)
    assert store.promote(p, actor="owner", reason="approved").version == 2
    assert store.get_proposal(p).state is ProposalState.ACTIVE
