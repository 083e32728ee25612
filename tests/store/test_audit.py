"""The audit log: hash chain, tamper detection of every kind, concurrent appends.

Runs against SQLite always, and against PostgreSQL too when AUTOPILOT_TEST_PG_URL is set.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import store.database as store_module
from contracts.documents import canonical_json
from policies.policy import load_policy
from store import AuditVerification, Store
from store.audit import AuditSeqConflict, entry_hash_of
from store.schema import GENESIS_HASH, audit_entries

STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"


@pytest.fixture
def filled(store: Store) -> Store:
    for i in range(1, 6):
        store.audit_append(actor=f"actor-{i}", action="test.event", subject=f"thing/{i}",
                           payload={"n": i, "note": "ünïcode", "nested": {"b": 2, "a": [1, 2]}})
    return store


def _execute(raw: sa.Engine, *statements: str) -> None:
    with raw.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_entries_form_a_chain(filled: Store):
    entries = filled.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.entry_hash
    for e in entries:
        assert e.ts.tzinfo is not None and e.ts.utcoffset() == timedelta(0)
        assert e.entry_hash == entry_hash_of(seq=e.seq, ts=e.ts, actor=e.actor, action=e.action,
                                             subject=e.subject, payload=e.payload,
                                             prev_hash=e.prev_hash)
    assert filled.verify_audit() == AuditVerification(ok=True, entries_checked=5)


def test_payload_is_stored_as_canonical_json(store: Store, raw: sa.Engine):
    store.audit_append(actor="a", action="b", subject="c",
                       payload={"z": 1, "a": datetime(2026, 1, 1, tzinfo=UTC)})
    with raw.connect() as conn:
        stored = conn.execute(sa.select(audit_entries.c.payload_json)).scalar_one()
    assert stored == canonical_json({"a": "2026-01-01 00:00:00+00:00", "z": 1})
    assert store.verify_audit().ok


def test_empty_log_verifies(store: Store):
    assert store.verify_audit() == AuditVerification(ok=True, entries_checked=0)


def test_filters_and_newest_first(filled: Store):
    assert [e.seq for e in filled.audit_entries(newest_first=True, limit=2)] == [5, 4]
    assert [e.seq for e in filled.audit_entries(subject="thing/3")] == [3]
    assert [e.seq for e in filled.audit_entries(after_seq=3)] == [4, 5]


def test_store_operations_are_audited_in_the_chain(store: Store):
    policy = load_policy(STARTER_POLICY)
    store.put_policy(policy)
    store.activate(1, actor="autopilot-init", reason="initial policy")
    actions = [(e.actor, e.action, e.subject) for e in store.audit_entries()]
    assert actions == [("autopilot-init", "policy.put", "policy/v1"),
                       ("autopilot-init", "policy.activate", "policy/v1")]
    assert store.audit_entries()[1].payload["reason"] == "initial policy"
    assert store.verify_audit().ok


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit_entries SET payload_json = '{\"n\":300}' WHERE seq = 3",
        ("UPDATE audit_entries SET payload_json = REPLACE(payload_json, '\"n\":3', "
        "'\"n\": 3') WHERE seq = 3"),
        "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 3",
        "UPDATE audit_entries SET action = 'test.nothing' WHERE seq = 3",
        "UPDATE audit_entries SET subject = 'thing/elsewhere' WHERE seq = 3",
    ],
    ids=["payload", "payload-whitespace", "actor", "action", "subject"],
)
def test_edited_entry_is_detected(filled: Store, raw: sa.Engine, tamper: str):
    _execute(raw, tamper)
    result = filled.verify_audit()
    assert not result.ok
    assert result.first_bad_seq == 3
    assert "altered" in result.reason


def test_edited_timestamp_is_detected(filled: Store, raw: sa.Engine):
    earlier = filled.audit_entries()[2].ts - timedelta(hours=5)
    with raw.begin() as conn:
        conn.execute(sa.update(audit_entries).where(audit_entries.c.seq == 3).values(ts=earlier))
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_deleted_entry_is_detected(filled: Store, raw: sa.Engine):
    _execute(raw, "DELETE FROM audit_entries WHERE seq = 2")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "missing" in result.reason


def test_deleted_entry_with_renumbering_is_detected(filled: Store, raw: sa.Engine):
    _execute(raw, "DELETE FROM audit_entries WHERE seq = 2",
             "UPDATE audit_entries SET seq = seq - 1 WHERE seq > 2")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_deleted_last_entry_is_detected(filled: Store, raw: sa.Engine):
    _execute(raw, "DELETE FROM audit_entries WHERE seq = 5")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "removed from the end" in result.reason


def test_swapped_entries_are_detected(filled: Store, raw: sa.Engine):
    _execute(raw,
             "UPDATE audit_entries SET seq = -1 WHERE seq = 2",
             "UPDATE audit_entries SET seq = 2 WHERE seq = 3",
             "UPDATE audit_entries SET seq = 3 WHERE seq = -1")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_forged_hash_is_detected(filled: Store, raw: sa.Engine):
    # Edit an entry and recompute its own hash: the next entry no longer links to it.
    target = filled.audit_entries()[2]
    forged_payload = {"n": 999}
    forged_hash = entry_hash_of(seq=3, ts=target.ts, actor=target.actor, action=target.action,
                                subject=target.subject, payload=forged_payload,
                                prev_hash=target.prev_hash)
    with raw.begin() as conn:
        conn.execute(sa.update(audit_entries).where(audit_entries.c.seq == 3).values(
            payload_json=canonical_json(forged_payload), entry_hash=forged_hash))
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "does not link" in result.reason


def test_forged_last_entry_is_detected_by_the_head(filled: Store, raw: sa.Engine):
    last = filled.audit_entries()[-1]
    forged_hash = entry_hash_of(seq=5, ts=last.ts, actor="mallory", action=last.action,
                                subject=last.subject, payload=last.payload,
                                prev_hash=last.prev_hash)
    with raw.begin() as conn:
        conn.execute(sa.update(audit_entries).where(audit_entries.c.seq == 5).values(
            actor="mallory", entry_hash=forged_hash))
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_garbage_hash_is_detected(filled: Store, raw: sa.Engine):
    _execute(raw, f"UPDATE audit_entries SET entry_hash = '{'e' * 64}' WHERE seq = 4")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_appends_after_tampering_do_not_hide_it(filled: Store, raw: sa.Engine):
    _execute(raw, "DELETE FROM audit_entries WHERE seq = 5")
    filled.audit_append(actor="a", action="test.event", subject="thing/6")
    result = filled.verify_audit()
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_a_lost_race_for_a_seq_is_retried_whole(store: Store, monkeypatch: pytest.MonkeyPatch):
    real_append = store_module.append_entry
    calls: list[int] = []

    def lose_first_race(conn, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise AuditSeqConflict("audit seq 1 was taken by another writer")
        return real_append(conn, **kwargs)

    monkeypatch.setattr(store_module, "append_entry", lose_first_race)
    store.audit_append(actor="a", action="test.event", subject="thing/1")
    assert len(calls) == 2
    assert [e.seq for e in store.audit_entries()] == [1]
    assert store.verify_audit().ok


def _append_concurrently(stores: list[Store], per_thread: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def writer(i: int, s: Store) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                s.audit_append(actor=f"writer-{i}", action="test.concurrent",
                               subject=f"thread/{i}", payload={"n": n})
        except Exception as err:  # noqa: BLE001 - surfaced by the caller's assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_appends_on_one_store_keep_the_chain_linear(store: Store):
    assert _append_concurrently([store, store], per_thread=40) == []
    entries = store.audit_entries()
    assert [e.seq for e in entries] == list(range(1, 81))
    assert store.verify_audit() == AuditVerification(ok=True, entries_checked=80)


def test_concurrent_appends_from_two_stores_keep_the_chain_linear(store_url: str):
    # Two Store objects have two engines and pools: as close to two processes as a test gets.
    stores = [Store.open(store_url), Store.open(store_url)]
    try:
        assert _append_concurrently(stores, per_thread=40) == []
        result = stores[0].verify_audit()
        assert result == AuditVerification(ok=True, entries_checked=80)
        writers = {e.actor for e in stores[1].audit_entries()}
        assert writers == {"writer-0", "writer-1"}
    finally:
        for s in stores:
            s.close()
