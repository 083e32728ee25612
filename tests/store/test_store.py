"""The store: policies and the active pointer, proposals, approvals, evidence, leases, schema.

Runs against SQLite always, and against PostgreSQL too when AUTOPILOT_TEST_PG_URL is set.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import store.database as store_module
from contracts.errors import PermanentError, TransientError
from policies.policy import Policy, load_policy
from store import (
    SCHEMA_VERSION,
    DecisionAlreadyRecorded,
    GateVerdict,
    IllegalTransition,
    NotFoundError,
    PolicyVersionConflict,
    PromotionRefused,
    ProposalState,
    SchemaVersionError,
    Store,
    StoreBusy,
    StoreError,
    StoreIntegrityError,
    proposal_id_for,
)
from store.errors import translate_database_errors
from store.schema import MIGRATIONS, leases, schema_meta

STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"
WINDOW = "2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"


@pytest.fixture
def v1() -> Policy:
    return load_policy(STARTER_POLICY)


@pytest.fixture
def v2(v1: Policy) -> Policy:
    return v1.evolve(author="autopilot", quantization={"S": "int8"})


@pytest.fixture
def v3(v2: Policy) -> Policy:
    return v2.evolve(author="autopilot", quantization={"S": "int4"})


def _audit_count(store: Store) -> int:
    return len(store.audit_entries())


def _proposal_at_awaiting(store: Store, v1: Policy, v2: Policy):
    store.put_policy(v1)
    store.put_policy(v2)
    store.activate(1, actor="init", reason="initial policy")
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                              window=WINDOW, predicted={"cost_per_green_pr": -0.12},
                              actor="autopilot")
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates", evidence={"gates": []})
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="autopilot")
    return p


# ------------------------------------------------------------------------------ opening
def test_for_state_dir_creates_sqlite_file_with_wal_and_foreign_keys(tmp_path: Path):
    state = tmp_path / "state"
    with Store.for_state_dir(state) as store:
        assert (state / "autopilot.db").is_file()
        assert store.schema_version() == SCHEMA_VERSION
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_open_hides_password_in_url():
    with pytest.raises(StoreError) as err:
        Store.open("postgresql+nosuchdriver://admin:s3cret@localhost/db")
    assert "s3cret" not in str(err.value)


def test_reopening_keeps_data(store_url: str, v1: Policy):
    with Store.open(store_url) as first:
        first.put_policy(v1)
        first.activate(1, actor="init", reason="initial policy")
    with Store.open(store_url) as second:
        assert second.active_policy().version == 1
        assert second.verify_audit().ok


# ----------------------------------------------------------------------------- policies
def test_put_and_get_policy_keeps_yaml_and_hash(store: Store, v1: Policy):
    record = store.put_policy(v1)
    assert (record.version, record.content_hash) == (1, v1.content_hash)
    fetched = store.get_policy(1)
    assert fetched.content_hash == v1.content_hash
    assert fetched.yaml_text == v1.to_yaml()
    assert fetched.policy == v1
    assert fetched.author == "autopilot-init"
    assert fetched.created.tzinfo is not None and fetched.stored_at.utcoffset() == timedelta(0)


def test_put_policy_is_idempotent(store: Store, v1: Policy):
    first = store.put_policy(v1)
    entries = _audit_count(store)
    again = store.put_policy(load_policy(STARTER_POLICY))
    assert again.content_hash == first.content_hash
    assert [p.version for p in store.list_policies()] == [1]
    assert _audit_count(store) == entries  # nothing new happened, nothing new recorded


def test_put_policy_refuses_a_different_spec_under_a_taken_version(store: Store, v1: Policy):
    store.put_policy(v1)
    clash = Policy.model_validate(
        {**v1.model_dump(mode="json", by_alias=True),
         "spec": {**v1.spec_json(), "quantization": {"S": "int8"}}}
    )
    with pytest.raises(PolicyVersionConflict, match=r"policy v1 already exists.*new version"):
        store.put_policy(clash)
    assert store.get_policy(1).content_hash == v1.content_hash


def test_list_and_missing_policies(store: Store, v1: Policy, v2: Policy):
    store.put_policy(v2)
    store.put_policy(v1)
    assert [p.version for p in store.list_policies()] == [1, 2]
    assert store.get_policy(2).parent_version == 1
    with pytest.raises(NotFoundError, match="policy v9"):
        store.get_policy(9)


def test_tampered_policy_row_is_refused_on_read(store: Store, raw: sa.Engine, v1: Policy):
    store.put_policy(v1)
    with raw.begin() as conn:
        conn.execute(sa.text("UPDATE policies SET yaml_text = REPLACE(yaml_text, "
                             "'max_attempts: 3', 'max_attempts: 9')"))
    with pytest.raises(StoreIntegrityError, match="does not match its recorded hash"):
        store.get_policy(1)


# -------------------------------------------------------------------- activation pointer
def test_activate_moves_pointer_and_records_history(
    store: Store, raw: sa.Engine, v1: Policy, v2: Policy
):
    assert store.active_policy() is None
    assert store.previous_active() is None
    store.put_policy(v1)
    store.put_policy(v2)
    store.activate(1, actor="init", reason="initial policy")
    second = store.activate(2, actor="alice", reason="manual change")
    assert (second.version, second.previous_version) == (2, 1)
    assert store.active_policy().version == 2
    assert store.previous_active().version == 1
    history = store.activation_history()
    assert [(a.version, a.previous_version, a.actor) for a in history] == [
        (2, 1, "alice"), (1, None, "init")]
    with raw.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM active_policy")).scalar() == 1
    actions = [(e.action, e.subject) for e in store.audit_entries(action="policy.activate")]
    assert actions == [("policy.activate", "policy/v1"), ("policy.activate", "policy/v2")]


def test_activating_the_active_version_changes_nothing(store: Store, v1: Policy):
    store.put_policy(v1)
    first = store.activate(1, actor="init", reason="initial policy")
    entries = _audit_count(store)
    assert store.activate(1, actor="init", reason="again") == first
    assert len(store.activation_history()) == 1
    assert _audit_count(store) == entries


def test_activate_unknown_version_is_refused(store: Store):
    with pytest.raises(NotFoundError, match="policy v7 is not in the store"):
        store.activate(7, actor="alice", reason="typo")


def test_crash_mid_activation_keeps_previous_policy_and_no_audit_entry(
    store: Store, v1: Policy, v2: Policy, monkeypatch: pytest.MonkeyPatch
):
    store.put_policy(v1)
    store.put_policy(v2)
    store.activate(1, actor="init", reason="initial policy")
    entries = store.audit_entries()

    def crash(*args, **kwargs):
        # The pointer and history rows are already written when the audit append runs.
        raise RuntimeError("power cut")

    monkeypatch.setattr(store_module, "append_entry", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        store.activate(2, actor="alice", reason="promote")
    monkeypatch.undo()

    assert store.active_policy().version == 1
    assert [a.version for a in store.activation_history()] == [1]
    assert store.audit_entries() == entries
    assert store.verify_audit().ok


# ----------------------------------------------------------------------------- proposals
def test_proposal_id_is_short_and_stable():
    pid = proposal_id_for("a" * 64, "b" * 64, WINDOW)
    assert re.fullmatch(r"P-[0-9a-f]{10}", pid)
    assert pid == proposal_id_for("a" * 64, "b" * 64, WINDOW)
    assert pid != proposal_id_for("a" * 64, "b" * 64, "another window")


def test_create_proposal_is_idempotent(store: Store, v1: Policy, v2: Policy):
    store.put_policy(v1)
    store.put_policy(v2)
    args = {"candidate_version": 2, "baseline_version": 1, "lever": "quantization", "window": WINDOW,
                "predicted": {"cost_per_green_pr": -0.12, "fpy": 0.0}, "actor": "autopilot"}
    first = store.create_proposal(**args)
    entries = _audit_count(store)
    second = store.create_proposal(**args)
    assert first == second
    assert first.proposal_id == proposal_id_for(v2.content_hash, v1.content_hash, WINDOW)
    assert first.state is ProposalState.PROPOSED
    assert first.predicted.record() == {"cost_per_green_pr": -0.12, "fpy": 0.0, "risk": "high"}
    assert [p.proposal_id for p in store.list_proposals()] == [first.proposal_id]
    assert _audit_count(store) == entries
    other = store.create_proposal(**{**args, "window": "next night"})
    assert other.proposal_id != first.proposal_id


def test_create_proposal_needs_known_and_different_policies(store: Store, v1: Policy):
    store.put_policy(v1)
    with pytest.raises(NotFoundError, match="policy v2"):
        store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window=WINDOW, actor="autopilot")
    with pytest.raises(StoreError, match="nothing to propose"):
        store.create_proposal(candidate_version=1, baseline_version=1, lever="routing",
                              window=WINDOW, actor="autopilot")


def test_full_lifecycle_through_promotion_and_verification(store: Store, v1: Policy, v2: Policy):
    p = _proposal_at_awaiting(store, v1, v2)
    gated = store.get_proposal(p.proposal_id)
    assert gated.gate_verdict is GateVerdict.PASSED and gated.evidence_hash is not None
    store.record_decision(p.proposal_id, approver="owner@example.com", decision="approve",
                          reason="looks good")
    activation = store.promote(p.proposal_id, actor="owner@example.com", reason="approved")
    assert (activation.version, activation.proposal_id) == (2, p.proposal_id)
    assert store.active_policy().version == 2
    assert store.get_proposal(p.proposal_id).state is ProposalState.ACTIVE
    store.transition_proposal(p.proposal_id, "verified", actor="autopilot",
                              reason="realised within the predicted interval")
    assert store.get_proposal(p.proposal_id).state is ProposalState.VERIFIED
    moves = [(e.payload["from"], e.payload["to"])
             for e in store.audit_entries(subject=p.proposal_id) if "from" in e.payload]
    assert moves == [("proposed", "gated"), ("gated", "awaiting_approval"),
                     ("awaiting_approval", "approved"), ("approved", "active"),
                     ("active", "verified")]
    assert store.verify_audit().ok


def test_rollback_reactivates_the_baseline(store: Store, v1: Policy, v2: Policy):
    p = _proposal_at_awaiting(store, v1, v2)
    store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="ok")
    store.promote(p.proposal_id, actor="owner", reason="approved")
    activation = store.rollback(p.proposal_id, actor="autopilot", reason="cost regressed 14%")
    assert (activation.version, activation.previous_version) == (1, 2)
    assert store.active_policy().version == 1
    assert store.get_proposal(p.proposal_id).state is ProposalState.ROLLED_BACK


@pytest.mark.parametrize("to_state", ["awaiting_approval", "approved", "active", "verified",
                                      "rolled_back", "proposed"])
def test_illegal_transitions_name_both_states(store: Store, v1: Policy, v2: Policy,
                                              to_state: str):
    store.put_policy(v1)
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                              window=WINDOW, actor="autopilot")
    entries = _audit_count(store)
    with pytest.raises(IllegalTransition, match=f"proposed -> {to_state}") as err:
        store.transition_proposal(p.proposal_id, to_state, actor="autopilot")
    assert (err.value.from_state, err.value.to_state) == ("proposed", to_state)
    assert "allowed from proposed: gated" in str(err.value)
    assert isinstance(err.value, PermanentError)
    assert store.get_proposal(p.proposal_id).state is ProposalState.PROPOSED
    assert _audit_count(store) == entries


def test_decisions_and_activation_go_through_their_own_calls(
    store: Store, v1: Policy, v2: Policy
):
    # Legal moves in the lifecycle, but each needs more than a state change: an approval
    # row, or the active pointer moving in the same transaction.
    p = _proposal_at_awaiting(store, v1, v2)
    with pytest.raises(IllegalTransition, match="awaiting_approval -> approved.*record_decision"):
        store.transition_proposal(p.proposal_id, "approved", actor="owner")
    store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="ok")
    with pytest.raises(IllegalTransition, match="approved -> active.*promote"):
        store.transition_proposal(p.proposal_id, "active", actor="owner")
    assert store.active_policy().version == 1
    assert store.get_proposal(p.proposal_id).state is ProposalState.APPROVED


def test_terminal_states_refuse_every_move(store: Store, v1: Policy, v2: Policy):
    p = _proposal_at_awaiting(store, v1, v2)
    store.record_decision(p.proposal_id, approver="owner", decision="reject", reason="too risky")
    assert store.get_proposal(p.proposal_id).state is ProposalState.REJECTED
    with pytest.raises(IllegalTransition, match="rejected -> active.*"):
        store.promote(p.proposal_id, actor="owner", reason="changed my mind")
    with pytest.raises(IllegalTransition, match="rejected -> verified.*rejected is final"):
        store.transition_proposal(p.proposal_id, "verified", actor="autopilot")
    assert store.active_policy().version == 1


def test_gated_needs_a_verdict_and_only_gated_takes_one(store: Store, v1: Policy, v2: Policy):
    store.put_policy(v1)
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                              window=WINDOW, actor="autopilot")
    with pytest.raises(StoreError, match="needs the gate verdict"):
        store.transition_proposal(p.proposal_id, "gated", actor="gates")
    with pytest.raises(StoreError, match="unknown gate verdict 'MAYBE'"):
        store.transition_proposal(p.proposal_id, "gated", actor="gates", verdict="MAYBE")
    store.transition_proposal(p.proposal_id, "gated", actor="gates", verdict="INCONCLUSIVE")
    with pytest.raises(StoreError, match="only on the move to gated"):
        store.transition_proposal(p.proposal_id, "awaiting_approval", actor="gates",
                                  verdict="PASSED")
    assert store.get_proposal(p.proposal_id).gate_verdict is GateVerdict.INCONCLUSIVE


def test_promotion_refused_when_baseline_is_no_longer_active(
    store: Store, v1: Policy, v2: Policy, v3: Policy
):
    p = _proposal_at_awaiting(store, v1, v2)
    store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="ok")
    store.put_policy(v3)
    store.activate(3, actor="alice", reason="hotfix")
    with pytest.raises(PromotionRefused, match="gated against policy v1 but v3 is active"):
        store.promote(p.proposal_id, actor="owner", reason="approved")
    assert store.active_policy().version == 3
    assert store.get_proposal(p.proposal_id).state is ProposalState.APPROVED


def test_rollback_refused_unless_proposal_is_the_active_policy(
    store: Store, v1: Policy, v2: Policy, v3: Policy
):
    p = _proposal_at_awaiting(store, v1, v2)
    store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="ok")
    store.promote(p.proposal_id, actor="owner", reason="approved")
    store.put_policy(v3)
    store.activate(3, actor="alice", reason="later change")
    with pytest.raises(PromotionRefused, match="not the active policy"):
        store.rollback(p.proposal_id, actor="autopilot", reason="regression")
    assert store.active_policy().version == 3


# ----------------------------------------------------------------------------- approvals
def test_second_decision_is_refused(store: Store, v1: Policy, v2: Policy):
    p = _proposal_at_awaiting(store, v1, v2)
    approval = store.record_decision(p.proposal_id, approver="owner@example.com",
                                     decision="approve", reason="numbers are convincing")
    assert approval.decided_at.tzinfo is not None
    with pytest.raises(DecisionAlreadyRecorded, match="already decided.*approve by owner"):
        store.record_decision(p.proposal_id, approver="other@example.com", decision="reject",
                              reason="no")
    stored = store.get_approval(p.proposal_id)
    assert (stored.approver, stored.decision.value, stored.reason) == (
        "owner@example.com", "approve", "numbers are convincing")
    assert store.get_proposal(p.proposal_id).state is ProposalState.APPROVED


def test_decision_before_awaiting_approval_is_illegal(store: Store, v1: Policy, v2: Policy):
    store.put_policy(v1)
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                              window=WINDOW, actor="autopilot")
    with pytest.raises(IllegalTransition, match="proposed -> approved"):
        store.record_decision(p.proposal_id, approver="owner", decision="approve", reason="x")
    with pytest.raises(StoreError, match="approve or reject"):
        store.record_decision(p.proposal_id, approver="owner", decision="maybe", reason="x")
    assert store.get_approval(p.proposal_id) is None


# ------------------------------------------------------------------------------ evidence
def test_evidence_is_stored_by_hash_and_checked_on_read(
    store: Store, raw: sa.Engine, v1: Policy, v2: Policy
):
    store.put_policy(v1)
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="quantization",
                              window=WINDOW, actor="autopilot")
    bundle = {"candidate_hash": v2.content_hash, "baseline_hash": v1.content_hash,
              "gates": [{"name": "reproducibility", "phase": "PASSED"}]}
    record = store.put_evidence(bundle, actor="gates", proposal_id=p.proposal_id)
    assert store.put_evidence(bundle, actor="gates", proposal_id=p.proposal_id) == record
    fetched = store.get_evidence(record.sha256)
    assert fetched.bundle == bundle and fetched.candidate_hash == v2.content_hash
    assert [e.sha256 for e in store.evidence_for(p.proposal_id)] == [record.sha256]

    text = '{"raw": true,  "kept": "byte for byte"}'
    early = store.put_evidence(text, actor="gates", candidate_hash=v2.content_hash)
    assert early.json_text == text and early.proposal_id is None

    with raw.begin() as conn:
        conn.execute(sa.text("UPDATE evidence SET json_text = '{}' WHERE sha256 = :h"),
                     {"h": record.sha256})
    with pytest.raises(StoreIntegrityError, match="does not match its hash"):
        store.get_evidence(record.sha256)
    with pytest.raises(NotFoundError):
        store.get_evidence("f" * 64)


def test_evidence_needs_an_owner(store: Store):
    with pytest.raises(StoreError, match="proposal_id or a candidate_hash"):
        store.put_evidence({"a": 1}, actor="gates")


# -------------------------------------------------------------------------------- leases
class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_lease_contention_renewal_and_release(store_url: str):
    clock = FakeClock()
    with Store.open(store_url, clock=clock) as store:
        assert store.acquire_lease("nightly", "run-a", ttl_s=600)
        assert not store.acquire_lease("nightly", "run-b", ttl_s=600)
        assert store.acquire_lease("nightly", "run-a", ttl_s=600)  # renewal
        assert not store.release_lease("nightly", "run-b")
        assert store.get_lease("nightly").holder == "run-a"
        assert store.release_lease("nightly", "run-a")
        assert store.get_lease("nightly") is None
        assert store.acquire_lease("nightly", "run-b", ttl_s=600)


def test_expired_lease_can_be_taken_over(store_url: str):
    clock = FakeClock()
    with Store.open(store_url, clock=clock) as store:
        assert store.acquire_lease("nightly", "run-a", ttl_s=60)
        clock.now += timedelta(seconds=59)
        assert not store.acquire_lease("nightly", "run-b", ttl_s=60)
        clock.now += timedelta(seconds=2)
        assert store.acquire_lease("nightly", "run-b", ttl_s=60)
        lease = store.get_lease("nightly")
        assert lease.holder == "run-b" and lease.expires_at == clock.now + timedelta(seconds=60)
        assert not store.acquire_lease("nightly", "run-a", ttl_s=60)


def test_only_one_of_many_concurrent_runs_gets_the_lease(store_url: str):
    stores = [Store.open(store_url) for _ in range(6)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def contend(i: int) -> None:
        barrier.wait()
        results.append(stores[i].acquire_lease("nightly", f"run-{i}", ttl_s=600))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(results) == [False] * 5 + [True]


def test_lease_arguments_are_checked(store: Store):
    with pytest.raises(StoreError, match="ttl_s must be positive"):
        store.acquire_lease("nightly", "run-a", ttl_s=0)


# -------------------------------------------------------------------------------- schema
def _set_schema_version(engine: sa.Engine, version: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(schema_meta).values(value=str(version)))


def test_newer_schema_is_refused_with_a_clear_message(store_url: str, raw: sa.Engine):
    Store.open(store_url).close()
    newer = SCHEMA_VERSION + 1
    _set_schema_version(raw, newer)
    with pytest.raises(SchemaVersionError) as err:
        Store.open(store_url)
    assert str(err.value) == (
        f"database schema v{newer} is newer than this autopilot (v{SCHEMA_VERSION}): "
        "upgrade the autopilot"
    )


def test_older_schema_runs_registered_migrations(
    store_url: str, raw: sa.Engine, monkeypatch: pytest.MonkeyPatch
):
    Store.open(store_url).close()
    # Pretend the database is v0: it had no leases table yet.
    _set_schema_version(raw, 0)
    with raw.begin() as conn:
        leases.drop(conn)
    ran: list[int] = []

    def v0_to_v1(conn: sa.Connection) -> None:
        ran.append(0)
        leases.create(conn)
        conn.execute(sa.text("CREATE TABLE migration_marker (note VARCHAR(20))"))

    monkeypatch.setitem(MIGRATIONS, 0, v0_to_v1)
    with Store.open(store_url) as store:
        assert ran == [0]
        assert store.schema_version() == SCHEMA_VERSION
        assert store.acquire_lease("nightly", "run-a", ttl_s=60)
    with Store.open(store_url) as store:  # already migrated: runs nothing again
        assert ran == [0]


def test_older_schema_without_migration_is_refused(store_url: str, raw: sa.Engine):
    Store.open(store_url).close()
    _set_schema_version(raw, 0)
    assert 0 not in MIGRATIONS
    with pytest.raises(SchemaVersionError, match="no migration from v0 to v1"):
        Store.open(store_url)


def test_failed_migration_leaves_the_database_unchanged(
    store_url: str, raw: sa.Engine, monkeypatch: pytest.MonkeyPatch
):
    Store.open(store_url).close()
    _set_schema_version(raw, 0)

    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE migration_marker (note VARCHAR(20))"))
        raise RuntimeError("migration bug")

    monkeypatch.setitem(MIGRATIONS, 0, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        Store.open(store_url)
    with raw.connect() as conn:
        assert "migration_marker" not in sa.inspect(conn).get_table_names()
        assert conn.execute(sa.select(schema_meta.c.value)).scalar() == "0"


# -------------------------------------------------------------------- error translation
def test_locked_database_is_a_transient_error(tmp_path: Path):
    with Store.for_state_dir(tmp_path, busy_timeout_s=0.2) as store:
        blocker = sqlite3.connect(tmp_path / "autopilot.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusy, match="database is locked") as err:
                store.audit_append(actor="a", action="test", subject="s")
            assert isinstance(err.value, TransientError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        store.audit_append(actor="a", action="test", subject="s")  # free again


def test_integrity_violation_is_a_permanent_error():
    orig = sqlite3.IntegrityError("UNIQUE constraint failed: policies.version")
    with (
        pytest.raises(StoreIntegrityError, match="constraint violated") as err,
        translate_database_errors("storing policy v1"),
    ):
        raise sa.exc.IntegrityError("INSERT ...", {}, orig)
    assert isinstance(err.value, PermanentError)


def test_unreachable_database_is_transient():
    orig = Exception('connection to server at "db" (10.0.0.1), port 5432 failed: '
                     "Connection refused")
    with pytest.raises(StoreBusy), translate_database_errors("opening store"):
        raise sa.exc.OperationalError("connect", {}, orig)


def test_naive_timestamps_are_refused(tmp_path: Path):
    naive_clock = lambda: datetime(2026, 1, 1)
    with (
        Store.for_state_dir(tmp_path, clock=naive_clock) as store,
        pytest.raises(StoreError, match="naive"),
    ):
        store.audit_append(actor="a", action="b", subject="c")
