"""Crash points of promotion and rollback (issue 14, the standing suites).

A promotion or a rollback is one transaction (the activation row, the active pointer, its
audit entry, the proposal's move and its audit entry), then an anchor appended outside the
database. A crash at each point inside the transaction leaves the store exactly as it was
(same active policy, history, proposal state and audit log, the chain verifying); a crash
after the commit leaves the change whole. Either way a retry ends where an uninterrupted run
ends, and the audit chain, the state tables and the anchor file agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.loop.promotion import NothingToRollBack, promote_approved, rollback_active
from gates.evidence import SCHEMA, SCHEMA_VERSION
from gates.suite import REFERENCE_SUITE_SHA256
from policies.policy import load_policy
from store import Decision, ProposalState, Store, database

STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"


class PowerCut(BaseException):
    """Not an Exception: nothing in the product may catch it and carry on."""


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'autopilot.db'}")
    v1 = load_policy(STARTER_POLICY)
    v2 = v1.evolve(author="autopilot", quantization={"S": "int8"})
    for p in (v1, v2):
        s.put_policy(p)
    s.activate(1, actor="init", reason="initial policy")
    yield s
    s.close()


def approved(store: Store) -> str:
    def named(version: int) -> dict[str, Any]:
        return {"version": version, "content_hash": store.get_policy(version).content_hash}

    evidence = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "candidate": named(2),
                "baseline": named(1), "suite": {"name": "reference",
                                                "content_hash": REFERENCE_SUITE_SHA256},
                "gates": [], "overall": "PASSED", "dry_run": False}
    pid = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                                window="2026-11-20", actor="autopilot").proposal_id
    store.record_gate(pid, "PASSED", actor="gates", evidence=evidence)
    store.transition_proposal(pid, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    store.record_decision(pid, approver="owner", decision=Decision.APPROVE, reason="ok")
    return pid


def snapshot(store: Store, pid: str) -> dict[str, Any]:
    active = store.active_policy()
    return {
        "active": active.version if active else None,
        "history": [(a.version, a.previous_version, a.proposal_id)
                    for a in store.activation_history()],
        "proposal": store.get_proposal(pid).state,
        "audit": store.audit_entries(),
    }


def promote(store: Store, pid: str) -> Any:
    return promote_approved(store, pid, actor="nightly", reason="approved")


def rollback(store: Store, pid: str) -> Any:
    return rollback_active(store, actor="nightly", reason="regression")


def crash_at_audit_append(monkeypatch: pytest.MonkeyPatch, nth: int) -> list[int]:
    """The ``nth`` audit append of the next write raises PowerCut."""
    real = database.append_entry
    calls = [0]

    def append(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            raise PowerCut(f"power cut at audit append #{nth}")
        return real(*args, **kwargs)

    monkeypatch.setattr(database, "append_entry", append)
    return calls


def crash_at_proposal_move(monkeypatch: pytest.MonkeyPatch) -> None:
    def move(*args: Any, **kwargs: Any) -> None:
        raise PowerCut("power cut before the proposal moved")

    monkeypatch.setattr(Store, "_move_proposal", move)


def _state_after(operation: str, tmp_path: Path) -> dict[str, Any]:
    """Where an uninterrupted run ends (audit entries compared by action and subject:
    their timestamps differ)."""
    s = Store.open(f"sqlite:///{tmp_path / 'reference.db'}",
                   anchor_file=tmp_path / "reference-anchors.jsonl")
    try:
        v1 = load_policy(STARTER_POLICY)
        for p in (v1, v1.evolve(author="autopilot", quantization={"S": "int8"})):
            s.put_policy(p)
        s.activate(1, actor="init", reason="initial policy")
        pid = approved(s)
        promote(s, pid)
        if operation == "rollback":
            rollback(s, pid)
        return _shape(snapshot(s, pid))
    finally:
        s.close()


def _shape(snap: dict[str, Any]) -> dict[str, Any]:
    return {**snap, "history": [(v, p, pid is not None) for v, p, pid in snap["history"]],
            "audit": [(e.action, e.subject.startswith("P-") or e.subject) for e in snap["audit"]]}


def _assert_whole(store: Store) -> None:
    verification = store.verify_audit()
    assert verification.ok, verification


CRASHES = ["audit-append-1", "audit-append-2", "proposal-move"]


def _arm(monkeypatch: pytest.MonkeyPatch, crash: str) -> None:
    if crash == "proposal-move":
        crash_at_proposal_move(monkeypatch)
    else:
        crash_at_audit_append(monkeypatch, int(crash.rsplit("-", 1)[1]))


@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_inside_promotion_changes_nothing_and_a_retry_promotes(
        store, monkeypatch, tmp_path, crash):
    pid = approved(store)
    before = snapshot(store, pid)
    anchors_before = store.anchor_file.read_bytes() if store.anchor_file.exists() else b""
    _arm(monkeypatch, crash)
    with pytest.raises(PowerCut):
        promote(store, pid)
    monkeypatch.undo()

    assert snapshot(store, pid) == before
    assert before["proposal"] is ProposalState.APPROVED and before["active"] == 1
    assert (store.anchor_file.read_bytes() if store.anchor_file.exists() else b"") \
        == anchors_before
    _assert_whole(store)

    assert promote(store, pid).version == 2
    assert _shape(snapshot(store, pid)) == _state_after("promote", tmp_path)
    _assert_whole(store)


@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_inside_rollback_changes_nothing_and_a_retry_rolls_back(
        store, monkeypatch, tmp_path, crash):
    pid = approved(store)
    promote(store, pid)
    before = snapshot(store, pid)
    _arm(monkeypatch, crash)
    with pytest.raises(PowerCut):
        rollback(store, pid)
    monkeypatch.undo()

    assert snapshot(store, pid) == before
    assert before["proposal"] is ProposalState.ACTIVE and before["active"] == 2
    _assert_whole(store)

    assert rollback(store, pid).version == 1
    assert store.get_proposal(pid).state is ProposalState.ROLLED_BACK
    assert _shape(snapshot(store, pid)) == _state_after("rollback", tmp_path)
    _assert_whole(store)


@pytest.mark.parametrize("operation", ["promote", "rollback"])
@pytest.mark.parametrize("failure", [OSError("disk full"), PowerCut("power cut")],
                         ids=["anchor-write-fails", "crash-before-anchor"])
def test_a_crash_after_the_commit_leaves_the_change_whole_and_a_retry_is_idempotent(
        store, monkeypatch, tmp_path, operation, failure):
    pid = approved(store)
    if operation == "rollback":
        promote(store, pid)

    def append_anchor(*args: Any, **kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(database, "append_anchor", append_anchor)
    run = promote if operation == "promote" else rollback
    if isinstance(failure, OSError):
        run(store, pid)  # logged, not raised: the change stands
    else:
        with pytest.raises(PowerCut):
            run(store, pid)
    monkeypatch.undo()

    expected = _state_after(operation, tmp_path)
    assert _shape(snapshot(store, pid)) == expected
    _assert_whole(store)  # an anchor behind the head is still a prefix of the chain

    if operation == "promote":
        assert promote(store, pid).version == 2  # idempotent: nothing new
    else:
        with pytest.raises(NothingToRollBack):  # the rollback already happened
            rollback(store, pid)
    assert _shape(snapshot(store, pid)) == expected
    _assert_whole(store)
