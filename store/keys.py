"""The gateway's API keys in the store: created, listed, revoked, and checked.

A key is bound to one team, optionally to a list of repos, and to a purpose: ``serve``
(ordinary traffic) or ``gate`` (may also send gate traffic, which names a policy version).
Its secret, ``ap-<key id>.<43 url-safe characters>`` (32 random bytes), is returned once by
``create_api_key``; the store keeps only its SHA-256 (the secret carries 256 random bits,
so a fast hash is enough), looked up by the key id the secret starts with and compared with
``hmac.compare_digest``. Creation and revocation are audit events in the same transaction;
a revoked key keeps its row. ``mark_api_keys_used`` records when keys were last used (the
gateway batches it), without an audit event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from store.errors import NotFoundError, StoreError
from store.schema import api_keys

__all__ = [
    "API_KEY_PREFIX",
    "KEY_PURPOSES",
    "ApiKeyRecord",
    "ApiKeysMixin",
    "key_id_of",
    "secret_sha256",
]

API_KEY_PREFIX = "ap-"
KEY_PURPOSES = ("serve", "gate")
_KEY_ID = re.compile(r"k[0-9a-f]{12}")
# ap-<key id>.<token>: the token is 43 url-safe base64 characters (32 bytes).
_SECRET = re.compile(r"ap-(k[0-9a-f]{12})\.[A-Za-z0-9_-]{43}")
_NAME_LIMIT = 200


@dataclass(frozen=True)
class ApiKeyRecord:
    """One API key (never its secret): ``repos`` empty means any repo of the team."""

    key_id: str
    name: str
    team: str
    repos: tuple[str, ...]
    purpose: str
    secret_sha256: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's (constant-time comparison of the hashes)."""
        return hmac.compare_digest(secret_sha256(secret), self.secret_sha256)

    def as_dict(self) -> dict[str, Any]:
        """The listing's fields (the hash is left out: nothing needs to read it back)."""
        return {"key_id": self.key_id, "name": self.name, "team": self.team,
                "repos": list(self.repos), "purpose": self.purpose,
                "created_by": self.created_by, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "revoked_by": self.revoked_by,
                "last_used_at": self.last_used_at}


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id a well-formed secret starts with; None for anything else."""
    match = _SECRET.fullmatch(secret) if isinstance(secret, str) else None
    return match.group(1) if match else None


def _record(row: Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(row.key_id, row.name, row.team, tuple(json.loads(row.repos_json)),
                        row.purpose, row.secret_sha256, row.created_by, row.created_at,
                        row.revoked_at, row.revoked_by, row.last_used_at)


def _label(what: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"an API key's {what} must be a non-empty string (got {value!r})")
    value = value.strip()
    if len(value) > _NAME_LIMIT or any(not ch.isprintable() for ch in value):
        raise StoreError(f"an API key's {what} must be printable and at most {_NAME_LIMIT} "
                         f"characters (got {value[:60]!r})")
    return value


class ApiKeysMixin:
    """The API key methods of ``store.Store`` (kept apart: one concern, one module)."""

    def create_api_key(self, *, team: str, actor: str, repos: Iterable[str] = (),
                       name: str | None = None,
                       purpose: str = "serve") -> tuple[ApiKeyRecord, str]:
        """A new key and its secret: the secret is returned here once and never stored."""
        team = _label("team", team)
        actor = _label("creator", actor)
        repo_list = sorted({_label("repo", r) for r in repos})
        if purpose not in KEY_PURPOSES:
            raise StoreError(f"an API key's purpose is one of {', '.join(KEY_PURPOSES)} "
                             f"(got {purpose!r})")
        key_id = f"k{secrets.token_hex(6)}"
        secret = f"{API_KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        label = _label("name", name) if name is not None else f"{team}-{key_id}"

        def work(conn: Connection, now: datetime) -> ApiKeyRecord:
            conn.execute(sa.insert(api_keys).values(
                key_id=key_id, name=label, team=team, repos_json=json.dumps(repo_list),
                purpose=purpose, secret_sha256=secret_sha256(secret), created_by=actor,
                created_at=now, revoked_at=None, revoked_by=None, last_used_at=None))
            self._audit(conn, now, actor=actor, action="api_key.create",  # type: ignore[attr-defined]
                        subject=f"api_key:{key_id}",
                        payload={"name": label, "team": team, "repos": repo_list,
                                 "purpose": purpose})
            return _record(_key_row(conn, key_id))

        return self._write(f"creating an API key for team {team}", work), secret  # type: ignore[attr-defined]

    def list_api_keys(self, *, include_revoked: bool = True) -> list[ApiKeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self._reading("listing API keys") as conn:  # type: ignore[attr-defined]
            return [_record(row) for row in conn.execute(query).all()]

    def get_api_key(self, key_id: str) -> ApiKeyRecord:
        with self._reading(f"reading API key {key_id}") as conn:  # type: ignore[attr-defined]
            return _record(_key_row(conn, key_id))

    def find_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id (revoked or not), or None; no error for an unknown id."""
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            return None
        with self._reading(f"reading API key {key_id}") as conn:  # type: ignore[attr-defined]
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)
                               ).one_or_none()
            return None if row is None else _record(row)

    def authenticate_api_key(self, secret: str) -> ApiKeyRecord | None:
        """The unrevoked key ``secret`` belongs to, or None (malformed, unknown, wrong or
        revoked: the caller cannot tell which, and need not)."""
        key_id = key_id_of(secret)
        record = None if key_id is None else self.find_api_key(key_id)
        if record is None or record.revoked or not record.matches(secret):
            return None
        return record

    def revoke_api_key(self, key_id: str, *, actor: str,
                       reason: str | None = None) -> ApiKeyRecord:
        """Revoke a key (idempotent: revoking a revoked key changes and records nothing)."""
        actor = _label("revoker", actor)

        def work(conn: Connection, now: datetime) -> ApiKeyRecord:
            row = _key_row(conn, key_id)
            if row.revoked_at is not None:
                return _record(row)
            conn.execute(sa.update(api_keys).where(api_keys.c.key_id == key_id)
                         .values(revoked_at=now, revoked_by=actor))
            self._audit(conn, now, actor=actor, action="api_key.revoke",  # type: ignore[attr-defined]
                        subject=f"api_key:{key_id}",
                        payload={"team": row.team, "reason": reason or ""})
            return _record(_key_row(conn, key_id))

        return self._write(f"revoking API key {key_id}", work)  # type: ignore[attr-defined]

    def mark_api_keys_used(self, used: Mapping[str, datetime]) -> None:
        """Record last use per key id (a later time only; unknown ids are skipped). Not an
        audited change of state: a usage note the gateway writes in batches."""
        if not used:
            return
        column = api_keys.c.last_used_at

        def work(conn: Connection, _now: datetime) -> None:
            for key_id, when in used.items():
                conn.execute(sa.update(api_keys)
                             .where(api_keys.c.key_id == key_id)
                             .where(sa.or_(column.is_(None), column < when))
                             .values(last_used_at=when))

        self._write("recording API key use", work)  # type: ignore[attr-defined]


def _key_row(conn: Connection, key_id: str) -> Row[Any]:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"no API key {key_id!r}")
    return row
