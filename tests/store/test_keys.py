"""The gateway's API keys in the store (issue 15, defect 4): created with a secret shown
once and kept only as its hash, listed, revoked, audited, and migrated in from a v4 store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from store import SCHEMA_VERSION, NotFoundError, Store, StoreError, key_id_of
from store.schema import api_keys, schema_meta


def test_create_list_revoke_round_trip(store: Store):
    record, secret = store.create_api_key(team="payments", repos=["svc-b", "svc-a"],
                                          name="ci", actor="alice")
    assert secret.startswith("ap-") and key_id_of(secret) == record.key_id
    assert (record.team, record.repos, record.name, record.purpose) == (
        "payments", ("svc-a", "svc-b"), "ci", "serve")
    assert record.created_by == "alice" and not record.revoked

    other, _ = store.create_api_key(team="search", purpose="gate", actor="alice")
    assert other.repos == () and other.purpose == "gate"
    assert [k.key_id for k in store.list_api_keys()] == [record.key_id, other.key_id]

    assert store.authenticate_api_key(secret) == record
    revoked = store.revoke_api_key(record.key_id, actor="bob", reason="leaked")
    assert revoked.revoked and revoked.revoked_by == "bob"
    assert store.authenticate_api_key(secret) is None
    assert store.revoke_api_key(record.key_id, actor="bob") == revoked  # idempotent
    assert [k.key_id for k in store.list_api_keys(include_revoked=False)] == [other.key_id]
    assert store.get_api_key(record.key_id).revoked


def test_only_the_hash_of_the_secret_is_stored(store: Store, raw: sa.Engine):
    record, secret = store.create_api_key(team="payments", actor="alice")
    with raw.connect() as conn:
        row = conn.execute(sa.select(api_keys)).one()
        every_value = " ".join(str(v) for v in row)
        dump = " ".join(str(v) for r in conn.execute(sa.text("SELECT * FROM audit_entries"))
                        for v in r)
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    token = secret.split(".", 1)[1]
    assert token not in every_value and token not in dump
    assert record.key_id in every_value


def test_wrong_malformed_or_unknown_secrets_authenticate_nothing(store: Store):
    record, secret = store.create_api_key(team="payments", actor="alice")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert store.authenticate_api_key(forged) is None
    assert store.authenticate_api_key("ap-k000000000000." + "A" * 43) is None
    for junk in ("", "unused", "Bearer x", secret + "x", record.key_id, "ap-" * 100):
        assert store.authenticate_api_key(junk) is None
    assert store.find_api_key("k' OR 1=1 --") is None


def test_creation_and_revocation_are_audited(store: Store):
    record, _ = store.create_api_key(team="payments", repos=["svc"], actor="alice")
    store.revoke_api_key(record.key_id, actor="bob", reason="rotated")
    entries = store.audit_entries(subject=f"api_key:{record.key_id}")
    assert [(e.action, e.actor) for e in entries] == [("api_key.create", "alice"),
                                                      ("api_key.revoke", "bob")]
    assert entries[0].payload["team"] == "payments" and entries[0].payload["repos"] == ["svc"]
    assert entries[1].payload["reason"] == "rotated"
    assert store.verify_audit().ok


def test_bad_keys_are_refused(store: Store):
    with pytest.raises(StoreError, match="team"):
        store.create_api_key(team=" ", actor="alice")
    with pytest.raises(StoreError, match="purpose"):
        store.create_api_key(team="payments", purpose="admin", actor="alice")
    with pytest.raises(NotFoundError):
        store.revoke_api_key("k000000000000", actor="bob")
    assert store.list_api_keys() == []


def test_last_use_is_recorded_forward_only(store: Store):
    record, _ = store.create_api_key(team="payments", actor="alice")
    later = datetime(2026, 5, 2, tzinfo=UTC)
    store.mark_api_keys_used({record.key_id: later, "k000000000000": later})
    store.mark_api_keys_used({record.key_id: datetime(2026, 5, 1, tzinfo=UTC)})
    assert store.get_api_key(record.key_id).last_used_at == later


def test_a_v4_store_migrates_to_v5_and_keeps_its_data(store_url: str, raw: sa.Engine):
    from policies.policy import load_policy

    with Store.open(store_url) as store:
        store.put_policy(load_policy("controlplane/starter/policy.yaml"), actor="alice")
        store.activate(1, actor="alice", reason="first")
        entries = len(store.audit_entries())
    # Make it the v4 database it would have been: no api_keys table, version 4.
    with raw.begin() as conn:
        api_keys.drop(conn)
        conn.execute(sa.update(schema_meta).values(value="4"))
    with Store.open(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION  # v4 -> v5 -> ... the latest
        assert store.active_policy().version == 1
        assert len(store.audit_entries()) == entries and store.verify_audit().ok
        assert store.list_api_keys() == []
        record, secret = store.create_api_key(team="payments", actor="alice")
        assert store.authenticate_api_key(secret) == record


def test_audit_verify_names_a_key_row_the_log_never_made(store: Store, raw: sa.Engine):
    """A key inserted or re-scoped by hand would charge traffic to another team."""
    from store.schema import api_keys

    record, _ = store.create_api_key(team="payments", actor="owner")
    assert store.verify_audit().ok
    with raw.begin() as conn:
        conn.execute(sa.update(api_keys).where(api_keys.c.key_id == record.key_id)
                     .values(team="search"))
    report = store.verify_audit()
    assert not report.ok
    assert any(record.key_id in p and "team search" in p for p in report.problems)
