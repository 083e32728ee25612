"""The hash chain of the audit log: how an entry is hashed, appended and verified.

entry_hash = sha256(canonical JSON of [seq, ts, actor, action, subject, payload, prev_hash])
with ``ts`` as ISO-8601 UTC to the microsecond and ``prev_hash`` the previous entry's hash
(64 zeros for entry 1). Changing any field of an entry changes its hash; removing or
reordering entries breaks the ``prev_hash`` links or the seq run; removing entries from
the end disagrees with the chain head. What a chain alone cannot catch is a rewrite of an
entry and of everything after it, head included: anchors kept outside the database catch it
(``store.anchors``), and the state tables are checked against the log by ``store.replay``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from contracts.documents import canonical_json, content_hash
from store.records import AuditEntry, AuditVerification
from store.schema import GENESIS_HASH, audit_entries, audit_head

__all__ = ["AuditSeqConflict", "append_entry", "entry_hash_of", "row_to_entry", "verify_chain"]


class AuditSeqConflict(Exception):
    """Another writer took this seq first; the caller retries its whole transaction."""


def _ts_text(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash_of(
    *,
    seq: int,
    ts: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Any,
    prev_hash: str,
) -> str:
    return content_hash([seq, _ts_text(ts), actor, action, subject, payload, prev_hash])


def row_to_entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        payload=json.loads(row.payload_json),
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


def append_entry(
    conn: Connection,
    *,
    ts: datetime,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any] | None,
) -> AuditEntry:
    """Append inside the caller's transaction, which must already hold the write lock."""
    head = conn.execute(
        sa.select(audit_head.c.last_seq, audit_head.c.last_hash).where(audit_head.c.slot == 1)
    ).one()
    seq = head.last_seq + 1
    # Hash what will be read back: the canonical text, parsed (datetimes become strings).
    payload_json = canonical_json(dict(payload or {}))
    stored_payload = json.loads(payload_json)
    ts = ts.astimezone(UTC)
    entry_hash = entry_hash_of(
        seq=seq, ts=ts, actor=actor, action=action, subject=subject,
        payload=stored_payload, prev_hash=head.last_hash,
    )
    try:
        conn.execute(
            sa.insert(audit_entries).values(
                seq=seq, ts=ts, actor=actor, action=action, subject=subject,
                payload_json=payload_json, prev_hash=head.last_hash, entry_hash=entry_hash,
            )
        )
    except sa.exc.IntegrityError as err:
        raise AuditSeqConflict(f"audit seq {seq} was taken by another writer") from err
    moved = conn.execute(
        sa.update(audit_head)
        .where(audit_head.c.slot == 1, audit_head.c.last_seq == head.last_seq)
        .values(last_seq=seq, last_hash=entry_hash)
    )
    if moved.rowcount != 1:
        raise AuditSeqConflict(f"audit head moved past {head.last_seq} while appending")
    return AuditEntry(seq, ts, actor, action, subject, stored_payload, head.last_hash, entry_hash)


def verify_chain(rows: Iterable[Row[Any]], head: Row[Any] | None) -> AuditVerification:
    """Walk the entries in seq order; stop at the first one that does not hold."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0

    def bad(seq: int, reason: str) -> AuditVerification:
        return AuditVerification(ok=False, entries_checked=checked, first_bad_seq=seq, reason=reason)

    for row in rows:
        checked += 1
        if row.seq != expected_seq:
            return bad(expected_seq, f"entry {expected_seq} is missing (the next entry is "
                                     f"{row.seq}): entries were removed")
        if row.prev_hash != prev_hash:
            return bad(row.seq, f"entry {row.seq} does not link to entry {row.seq - 1} "
                                "(prev_hash differs): an entry was removed, reordered or "
                                "re-hashed")
        try:
            payload = json.loads(row.payload_json)
        except ValueError:
            return bad(row.seq, f"entry {row.seq} has a payload that is not JSON: altered")
        recomputed = entry_hash_of(
            seq=row.seq, ts=row.ts, actor=row.actor, action=row.action, subject=row.subject,
            payload=payload, prev_hash=row.prev_hash,
        )
        if recomputed != row.entry_hash or canonical_json(payload) != row.payload_json:
            return bad(row.seq, f"entry {row.seq} does not match its hash: its content was "
                                "altered")
        prev_hash = row.entry_hash
        expected_seq += 1

    last_seq = expected_seq - 1
    if head is None:
        return bad(max(last_seq, 1), "the chain head row is missing")
    if head.last_seq > last_seq:
        return bad(last_seq + 1, f"the log ends at entry {last_seq} but the chain head records "
                                 f"entry {head.last_seq}: entries were removed from the end")
    if head.last_seq < last_seq:
        return bad(head.last_seq + 1, f"entries after the chain head (entry {head.last_seq}) "
                                      "were added outside the store")
    if head.last_hash != prev_hash:
        return bad(last_seq, f"entry {last_seq} does not match the chain head: it was "
                             "altered and re-hashed")
    return AuditVerification(ok=True, entries_checked=checked)
