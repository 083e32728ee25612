"""No promotion without the proposal's own evidence (issue 14, defect 2): the product's one
promotion path (``promote_approved``) reads the bundle the proposal's verdict was recorded
with and refuses, leaving the previous policy active, unless it judged this candidate
against this baseline on the pinned suite with the verdict recorded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from contracts.documents import canonical_json
from controlplane.loop.promotion import evidence_problems, promote_approved
from gates.evidence import SCHEMA, SCHEMA_VERSION
from gates.suite import REFERENCE_SUITE_SHA256
from policies.policy import load_policy
from store import Decision, PromotionRefused, ProposalState, Store
from store.schema import evidence, proposals

STARTER_POLICY = Path(__file__).resolve().parents[3] / "controlplane" / "starter" / "policy.yaml"


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'autopilot.db'}")
    v1 = load_policy(STARTER_POLICY)
    v2 = v1.evolve(author="autopilot", quantization={"S": "int8"})
    v3 = v2.evolve(author="autopilot", quantization={"S": "int4"})
    for p in (v1, v2, v3):
        s.put_policy(p)
    s.activate(1, actor="init", reason="initial policy")
    yield s
    s.close()


def bundle(store, candidate=2, baseline=1, overall="PASSED", suite=REFERENCE_SUITE_SHA256,
           **extra):
    def named(version):
        return {"version": version, "content_hash": store.get_policy(version).content_hash}

    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "candidate": named(candidate),
            "baseline": named(baseline), "suite": {"name": "reference", "content_hash": suite},
            "gates": [], "overall": overall, "dry_run": False, **extra}


def approved(store, verdict="PASSED", evidence_bundle=None, *, with_evidence=True) -> str:
    pid = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                                window="2026-11-20", actor="autopilot").proposal_id
    kept = None
    if with_evidence:
        kept = evidence_bundle if evidence_bundle is not None else bundle(store, overall=verdict)
    store.record_gate(pid, verdict, actor="gates", evidence=kept)
    store.transition_proposal(pid, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    store.record_decision(pid, approver="owner", decision=Decision.APPROVE, reason="ok")
    return pid


def refused(store, pid, match):
    with pytest.raises(PromotionRefused, match=match) as err:
        promote_approved(store, pid, actor="nightly", reason="approved")
    assert store.active_policy().version == 1  # the previous policy stays active
    assert store.get_proposal(pid).state is ProposalState.APPROVED
    assert "policy v1 stays active" in str(err.value)
    return str(err.value)


def test_a_verdict_without_evidence_is_never_promoted(store):
    pid = approved(store, with_evidence=False)
    refused(store, pid, "no evidence bundle")


def test_evidence_of_another_candidate_is_refused_naming_both_hashes(store, tmp_path):
    pid = approved(store)
    # What a database written before the fix holds: the verdict of v3's run on P (v2).
    text = canonical_json(bundle(store, candidate=3))
    sha = hashlib.sha256(text.encode()).hexdigest()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'autopilot.db'}")
    with engine.begin() as conn:
        conn.execute(sa.insert(evidence).values(
            sha256=sha, candidate_hash=store.get_proposal(pid).candidate_hash, proposal_id=pid,
            json_text=text, stored_at=datetime.now(UTC)))
        conn.execute(sa.update(proposals).where(proposals.c.proposal_id == pid)
                     .values(evidence_hash=sha))
    engine.dispose()
    message = refused(store, pid, "does not back promoting")
    assert store.get_policy(3).content_hash[:12] in message
    assert store.get_policy(2).content_hash[:12] in message


def test_a_verdict_on_another_suite_is_refused(store):
    pid = approved(store, evidence_bundle=bundle(store, suite="cd" * 32))
    message = refused(store, pid, "judged suite cdcdcdcdcdcd")
    assert REFERENCE_SUITE_SHA256[:12] in message


def test_the_suite_pin_is_the_callers_choice(store):
    pid = approved(store, evidence_bundle=bundle(store, suite="cd" * 32))
    record = promote_approved(store, pid, actor="nightly", reason="ok", suite_hash="cd" * 32)
    assert record.version == 2


def test_failed_gates_are_never_promoted(store):
    pid = approved(store, verdict="FAILED")
    refused(store, pid, "the gates FAILED")


def test_an_inconclusive_verdict_an_owner_approved_is_promoted(store):
    pid = approved(store, verdict="INCONCLUSIVE")
    assert promote_approved(store, pid, actor="nightly", reason="owner approved").version == 2


def test_own_evidence_promotes_and_a_rerun_is_idempotent(store):
    pid = approved(store)
    first = promote_approved(store, pid, actor="nightly", reason="approved")
    assert first.version == 2 and store.get_proposal(pid).state is ProposalState.ACTIVE
    assert promote_approved(store, pid, actor="nightly", reason="approved") == first


def test_evidence_problems_is_pure_and_names_each_part():
    class P:
        candidate_hash, baseline_hash, gate_verdict = "a" * 64, "b" * 64, "PASSED"

    good = {"schema": SCHEMA, "candidate": {"content_hash": "a" * 64},
            "baseline": {"content_hash": "b" * 64}, "suite": {"content_hash": "c" * 64},
            "overall": "PASSED", "dry_run": False}
    assert evidence_problems(P, good, suite_hash="c" * 64) == []
    assert evidence_problems(P, good, suite_hash=None) == []
    swapped = {**good, "candidate": {"content_hash": "d" * 64}}
    assert evidence_problems(P, swapped, suite_hash=None) == [
        f"it judged candidate {'d' * 12}, not {'a' * 12}"]
    assert evidence_problems(P, {**good, "dry_run": True}, suite_hash=None)
    assert evidence_problems(P, {**good, "overall": "INCONCLUSIVE"}, suite_hash=None) == [
        "its overall verdict is INCONCLUSIVE, but PASSED is recorded"]
    assert evidence_problems(P, {"gates": []}, suite_hash=None)[0].startswith(
        "it is not a gate evidence bundle")
