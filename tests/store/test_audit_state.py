"""The audit log covers the state (issue 14, defect 6).

``verify_audit`` replays the log against the state tables and names every disagreement;
promotion (and a canary's start) refuses a proposal whose approval does not match the log;
anchors kept outside the database expose a truncated or rewritten log.

Runs against SQLite always, and against PostgreSQL too when AUTOPILOT_TEST_PG_URL is set.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from policies.policy import load_policy
from store import (
    Anchor,
    AnchorError,
    AuditVerification,
    GateVerdict,
    PromotionRefused,
    ProposalState,
    Store,
    StoreError,
    parse_anchor_text,
    read_anchor_file,
)
from store.audit import entry_hash_of
from store.schema import (
    activations,
    active_policy,
    approvals,
    audit_entries,
    audit_head,
    evidence,
    proposals,
    rollouts,
)
from store.schema import policies as policy_rows

STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"
WINDOW = "2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"


def _awaiting(store: Store, candidate: int = 2, window: str = WINDOW) -> str:
    pid = store.create_proposal(candidate_version=candidate, baseline_version=1,
                                lever="quantization", window=window,
                                actor="autopilot").proposal_id
    store.record_gate(pid, GateVerdict.PASSED, actor="gates",
                      evidence={"gates": [], "candidate_version": candidate})
    store.transition_proposal(pid, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    return pid


def _sql(raw: sa.Engine, *statements: sa.Executable) -> None:
    with raw.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _active_version(raw: sa.Engine) -> int:
    with raw.connect() as conn:
        return conn.execute(sa.select(active_policy.c.version)).scalar_one()


def _problems(store: Store) -> str:
    result = store.verify_audit()
    assert not result.ok
    assert result.reason == result.problems[0]
    return "\n".join(result.problems)


# --------------------------------------------------------------------------- clean store
def test_a_clean_store_through_its_whole_lifecycle_verifies(store: Store, policies):
    promoted = _awaiting(store)
    store.record_decision(promoted, approver="owner", decision="approve", reason="cheaper")
    store.promote(promoted, actor="autopilot", reason="gates passed")
    store.transition_proposal(promoted, ProposalState.VERIFIED, actor="verify")
    rejected = _awaiting(store, candidate=3)
    store.record_decision(rejected, approver="owner", decision="reject", reason="no")
    result = store.verify_audit()
    assert result.ok, result.problems
    assert result.problems == () and result.reason is None
    assert result.entries_checked == len(store.audit_entries())


def test_a_canary_and_its_rollback_verify(store: Store, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    store.start_rollout(pid, share=0.1, actor="autopilot", reason="canary")
    store.advance_rollout(pid, share=0.5, actor="autopilot", reason="step")
    assert store.verify_audit().ok, store.verify_audit().problems
    store.complete_rollout(pid, actor="autopilot", reason="done")
    store.rollback(pid, actor="verify", reason="regressed")
    result = store.verify_audit()
    assert result.ok and result.problems == (), result.problems


def test_the_policy_put_entry_records_the_yaml_text_hash(store: Store, policies):
    put = store.audit_entries(action="policy.put", subject="policy/v2")[0]
    import hashlib

    row = store.get_policy(2)
    assert put.payload["yaml_sha256"] == hashlib.sha256(row.yaml_text.encode()).hexdigest()


# --------------------------------------------------------------------- active pointer
def test_an_edited_active_pointer_is_named(store: Store, raw: sa.Engine, policies):
    _sql(raw, sa.update(active_policy).values(version=2))
    found = _problems(store)
    assert ("active policy pointer says v2 but the last promote/rollback entry in the audit "
            "log (entry #4) says v1") in found


def test_a_deleted_active_pointer_is_named(store: Store, raw: sa.Engine, policies):
    _sql(raw, sa.delete(active_policy))
    assert "no active policy pointer" in _problems(store)


def test_an_edited_activation_row_is_named(store: Store, raw: sa.Engine, policies):
    _sql(raw, sa.update(activations).values(actor="x", version=3))
    assert "activation #1: its version is 3 but the audit log recorded 1" in _problems(store)


# ------------------------------------------------------------------------- stored policy
def test_an_edited_policy_yaml_is_named(store: Store, raw: sa.Engine, policies):
    yaml = store.get_policy(2).yaml_text
    assert "int8" in yaml
    _sql(raw, sa.update(policy_rows).where(policy_rows.c.version == 2)
         .values(yaml_text=yaml.replace("int8", "int4")))
    found = _problems(store)
    assert (f"policy v2: stored YAML hashes to {policies[3].content_hash[:12]} but its row says "
            f"{policies[2].content_hash[:12]}") in found


def test_an_edited_policy_hash_is_named(store: Store, raw: sa.Engine, policies):
    _sql(raw, sa.update(policy_rows).where(policy_rows.c.version == 2)
         .values(content_hash="f" * 64))
    found = _problems(store)
    assert (f"policy v2: its row says hash ffffffffffff but the audit log recorded "
            f"{policies[2].content_hash[:12]} when it was stored (entry #2)") in found


def test_yaml_and_hash_forged_together_are_named_by_the_audit_entry(
        store: Store, raw: sa.Engine, policies):
    # The row is self-consistent (it reads back fine); only the log knows it changed.
    forged = policies[3].model_copy(update={"metadata": policies[2].metadata})
    _sql(raw, sa.update(policy_rows).where(policy_rows.c.version == 2)
         .values(yaml_text=forged.to_yaml(), content_hash=forged.content_hash))
    assert store.get_policy(2).content_hash == forged.content_hash  # reads back fine
    found = _problems(store)
    assert (f"policy v2: its row says hash {forged.content_hash[:12]} but the audit log "
            f"recorded {policies[2].content_hash[:12]}") in found


def test_a_metadata_only_yaml_edit_is_named_by_the_text_hash(
        store: Store, raw: sa.Engine, policies):
    yaml = store.get_policy(2).yaml_text
    _sql(raw, sa.update(policy_rows).where(policy_rows.c.version == 2)
         .values(yaml_text=yaml + "# edited\n"))
    assert "policy v2: stored YAML text has sha256" in _problems(store)


def test_a_policy_row_without_its_entry_is_named(store: Store, raw: sa.Engine, policies):
    _sql(raw, sa.delete(audit_entries).where(audit_entries.c.seq == 3))
    assert "policy v3: row exists with no policy.put entry" in _problems(store)


# ----------------------------------------------------------------------------- approvals
def _forge_approval(raw: sa.Engine, pid: str, approver: str = "mallory") -> None:
    _sql(raw,
         sa.insert(approvals).values(proposal_id=pid, approver=approver, decision="approve",
                                     reason="trust me", decided_at=datetime.now(UTC)),
         sa.update(proposals).where(proposals.c.proposal_id == pid).values(state="approved"))


def test_a_forged_approval_is_named_and_not_promoted(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    _forge_approval(raw, pid)
    found = _problems(store)
    assert (f"approval of proposal {pid}: row exists (approve by mallory) with no audit entry"
            in found)
    assert (f"proposal {pid}: state is approved but its last audited transition" in found
            and "is to awaiting_approval" in found)
    with pytest.raises(PromotionRefused, match="with no audit entry.*policy v1 stays active"):
        store.promote(pid, actor="autopilot", reason="approved")
    assert _active_version(raw) == 1
    assert store.get_proposal(pid).state is ProposalState.APPROVED  # nothing moved
    with pytest.raises(PromotionRefused, match="does not match the audit log"):
        store.start_rollout(pid, share=0.1, actor="autopilot", reason="canary")
    assert store.current_rollout() is None


def test_a_rejection_turned_into_an_approval_is_named_and_not_promoted(
        store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="reject", reason="too risky")
    _sql(raw,
         sa.update(approvals).where(approvals.c.proposal_id == pid).values(decision="approve"),
         sa.update(proposals).where(proposals.c.proposal_id == pid).values(state="approved"))
    found = _problems(store)
    assert f"approval of proposal {pid}: decision approve differs from the audited reject" in found
    with pytest.raises(PromotionRefused, match="decision approve differs from the audited "
                                               "reject"):
        store.promote(pid, actor="autopilot", reason="approved")
    assert _active_version(raw) == 1


def test_an_approval_with_another_approver_is_not_promoted(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="intern", decision="approve", reason="lgtm")
    _sql(raw, sa.update(approvals).where(approvals.c.proposal_id == pid)
         .values(approver="platform-owner"))
    assert "approver platform-owner differs from the audited intern" in _problems(store)
    with pytest.raises(PromotionRefused, match="approver platform-owner differs"):
        store.promote(pid, actor="autopilot", reason="approved")
    assert _active_version(raw) == 1


def test_an_altered_decision_entry_is_not_trusted_by_promotion(
        store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="reject", reason="no")
    entry = store.audit_entries(subject=pid, action="proposal.rejected")[0]
    payload = {**entry.payload, "decision": "approve", "to": "approved"}
    _sql(raw,
         sa.update(audit_entries).where(audit_entries.c.seq == entry.seq)
         .values(action="proposal.approved", payload_json=json.dumps(payload)),
         sa.update(approvals).where(approvals.c.proposal_id == pid).values(decision="approve"),
         sa.update(proposals).where(proposals.c.proposal_id == pid).values(state="approved"))
    with pytest.raises(PromotionRefused, match=f"audit entry #{entry.seq} .* was altered"):
        store.promote(pid, actor="autopilot", reason="approved")
    assert _active_version(raw) == 1


def test_a_deleted_approval_row_is_named(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    _sql(raw, sa.delete(approvals).where(approvals.c.proposal_id == pid))
    assert (f"approval of proposal {pid}: audit entry" in _problems(store)
            and "records approve by owner but no approval row exists" in _problems(store))
    with pytest.raises(PromotionRefused, match="has no approval row"):
        store.promote(pid, actor="autopilot", reason="approved")


def test_an_edited_candidate_policy_is_not_promoted(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    forged = policies[3].model_copy(update={"metadata": policies[2].metadata})
    _sql(raw, sa.update(policy_rows).where(policy_rows.c.version == 2)
         .values(yaml_text=forged.to_yaml(), content_hash=forged.content_hash))
    with pytest.raises(PromotionRefused, match="but the proposal was gated on"):
        store.promote(pid, actor="autopilot", reason="approved")
    assert _active_version(raw) == 1


# ------------------------------------------------------------- proposals, evidence, canary
def test_an_edited_gate_verdict_is_named(store: Store, raw: sa.Engine, policies):
    pid = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                                window=WINDOW, actor="autopilot").proposal_id
    store.record_gate(pid, GateVerdict.FAILED, actor="gates")
    store.transition_proposal(pid, ProposalState.REJECTED, actor="gates", reason="FAILED")
    _sql(raw, sa.update(proposals).where(proposals.c.proposal_id == pid)
         .values(gate_verdict="PASSED", state="awaiting_approval"))
    found = _problems(store)
    assert f"proposal {pid}: gate verdict is PASSED but the audited one is FAILED" in found
    assert f"proposal {pid}: state is awaiting_approval but its last audited" in found


def test_a_proposal_inserted_outside_the_store_is_named(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    with raw.connect() as conn:
        row = conn.execute(sa.select(proposals).where(proposals.c.proposal_id == pid)).one()
    _sql(raw, sa.insert(proposals).values(**{**row._asdict(), "proposal_id": "P-forged0001",
                                              "evidence_hash": None, "gate_verdict": None}))
    assert "proposal P-forged0001: row exists (state awaiting_approval) with no audit entry" \
        in _problems(store)


def test_an_evidence_row_inserted_outside_the_store_is_named(
        store: Store, raw: sa.Engine, policies):
    import hashlib

    text = '{"forged": true}'
    sha = hashlib.sha256(text.encode()).hexdigest()
    _sql(raw, sa.insert(evidence).values(sha256=sha, candidate_hash=policies[2].content_hash,
                                         proposal_id=None, json_text=text,
                                         stored_at=datetime.now(UTC)))
    assert f"evidence bundle {sha[:12]}: row exists with no evidence.put entry" \
        in _problems(store)


def test_a_raised_canary_share_is_named(store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    store.start_rollout(pid, share=0.1, actor="autopilot", reason="canary")
    _sql(raw, sa.update(rollouts).values(share=1.0))
    assert f"rollout of proposal {pid}: share is 100% but the audited share is 10%" \
        in _problems(store)


def test_the_store_s_own_actions_cannot_be_appended_by_hand(store: Store):
    for action in ("proposal.approved", "policy.activate", "policy.put", "evidence.put"):
        with pytest.raises(StoreError, match="the store's own"):
            store.audit_append(actor="mallory", action=action, subject="P-x",
                               payload={"decision": "approve"})
    store.audit_append(actor="verify", action="rollout.look", subject="P-x")  # not reserved


# ------------------------------------------------------------------------------ anchors
def _truncate_to(raw: sa.Engine, seq: int) -> None:
    with raw.connect() as conn:
        kept = conn.execute(sa.select(audit_entries.c.entry_hash)
                            .where(audit_entries.c.seq == seq)).scalar_one()
    _sql(raw, sa.delete(audit_entries).where(audit_entries.c.seq > seq),
         sa.update(audit_head).values(last_seq=seq, last_hash=kept))


def test_a_truncated_log_with_a_rewritten_head_is_caught_by_an_anchor(
        store: Store, raw: sa.Engine, policies):
    pid = _awaiting(store)
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    store.promote(pid, actor="autopilot", reason="approved")
    anchor = store.audit_anchor()
    assert anchor.seq == len(store.audit_entries())
    _truncate_to(raw, 4)  # back to "v1 active", head rewritten to match
    chain_only = store.verify_audit(state=False, anchor_file=False)
    assert chain_only.ok  # the chain alone cannot see it
    result = store.verify_audit(anchors=[anchor], state=False, anchor_file=False)
    assert not result.ok and result.anchors_checked == 1
    assert (f"anchor {anchor.entry_hash[:12]}@{anchor.seq}: the log ends at entry 4, so "
            f"entry {anchor.seq} is gone: the log was truncated") in result.problems


def test_a_rewritten_head_entry_is_caught_by_an_anchor(store: Store, raw: sa.Engine, policies):
    anchor = store.audit_anchor()
    last = store.audit_entries()[-1]
    payload = {**last.payload, "reason": "rewritten"}
    forged = entry_hash_of(seq=last.seq, ts=last.ts, actor=last.actor, action=last.action,
                           subject=last.subject, payload=payload, prev_hash=last.prev_hash)
    from contracts.documents import canonical_json

    _sql(raw, sa.update(audit_entries).where(audit_entries.c.seq == last.seq)
         .values(payload_json=canonical_json(payload), entry_hash=forged),
         sa.update(audit_head).values(last_hash=forged))
    assert store.verify_audit(anchor_file=False).ok  # chain and state agree with the forgery
    short = parse_anchor_text(f"{anchor.entry_hash[:16]}@{anchor.seq}")
    result = store.verify_audit(anchors=short, anchor_file=False)
    assert not result.ok
    assert (f"entry {anchor.seq} now hashes to {forged[:12]}: the log was rewritten at or "
            f"before entry {anchor.seq}") in result.problems[0]


def test_anchors_hold_on_a_clean_log(store: Store, policies):
    anchors = [store.audit_anchor()]
    pid = _awaiting(store)
    anchors.append(store.audit_anchor())
    store.record_decision(pid, approver="owner", decision="approve", reason="ok")
    result = store.verify_audit(anchors=anchors, anchor_file=False)
    assert result == AuditVerification(ok=True, entries_checked=len(store.audit_entries()),
                                       anchors_checked=2)


def test_promotions_and_rollbacks_append_anchors_that_verify_checks(tmp_path: Path):
    state = tmp_path / "state"
    with Store.for_state_dir(state) as store:
        v1 = load_policy(STARTER_POLICY)
        store.put_policy(v1)
        store.put_policy(v1.evolve(author="autopilot", quantization={"S": "int8"}))
        store.activate(1, actor="init", reason="initial")
        pid = _awaiting(store)
        store.record_decision(pid, approver="owner", decision="approve", reason="ok")
        store.promote(pid, actor="autopilot", reason="approved")
        store.rollback(pid, actor="verify", reason="regressed")
        path = state / "audit" / "anchors.jsonl"
        assert store.anchor_file == path
        written = read_anchor_file(path)
        assert len(written) == 3  # activate, promote, rollback
        head = store.audit_anchor()
        assert (written[-1].seq, written[-1].entry_hash) == (head.seq, head.entry_hash)
        assert all(json.loads(line)["schema"] == "autopilot.audit-anchor"
                   for line in path.read_text().splitlines())
        result = store.verify_audit()
        assert result.ok and result.anchors_checked == 3
        promoted_at = written[1].seq
    engine = sa.create_engine(f"sqlite:///{state / 'autopilot.db'}")
    _truncate_to(engine, promoted_at - 1)
    engine.dispose()
    with Store.for_state_dir(state) as store:
        result = store.verify_audit()
        assert not result.ok
        assert sum("the log was truncated" in p for p in result.problems) == 2


def test_anchor_text_forms(tmp_path: Path):
    one = Anchor(7, "ab" * 32, "2026-01-01T00:00:00+00:00")
    assert parse_anchor_text(json.dumps(one.as_dict()))[0].seq == 7
    lines = "\n".join(json.dumps(Anchor(i, "cd" * 32).as_dict()) for i in (1, 2))
    assert [a.seq for a in parse_anchor_text(lines)] == [1, 2]
    assert parse_anchor_text(f"{'ef' * 6}@3")[0] == Anchor(3, "ef" * 6, source=f"{'ef' * 6}@3")
    assert read_anchor_file(tmp_path / "missing.jsonl") == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines + "\n{broken\n")
    with pytest.raises(AnchorError, match=r"bad.jsonl:3: not JSON"):
        read_anchor_file(bad)
    with pytest.raises(AnchorError, match="entry_hash must be"):
        parse_anchor_text('{"seq": 1, "entry_hash": "xyz"}')
    with pytest.raises(AnchorError):
        parse_anchor_text("abc@1")  # a hash prefix shorter than 12 digits
