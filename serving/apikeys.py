"""Who is calling the gateway: API keys checked against the store, and the attribution
that follows from them (issue 15, defect 4).

A request presents ``Authorization: Bearer ap-<key id>.<secret>`` (the OpenAI SDKs send
their ``api_key`` so). ``KeyRing`` looks the key id up in the store (``store.keys``),
compares the secret's hash and caches what it read for ``ttl_s`` seconds (unknown ids
too), so a revocation takes effect within ``ttl_s``; it also notes each key's last use for
the gateway to write back in batches (``flush_used``).

- Keys required (``KeyRing(require=True)``: always when the gateway listens beyond
  loopback, ``serving.fleet.start_fleet``): a request without a valid, unrevoked key is
  refused with 401 ``invalid_api_key``.
- Keys optional (loopback, the default): a request with no key, or with a bearer token
  that is not an autopilot key (``"unused"``, ``"EMPTY"``), keeps today's behaviour: the
  team and repo it states are what it is attributed to. An autopilot key it presents is
  checked all the same (401 when wrong or revoked).

``attribute`` applies a key to a parsed request: the team is the key's, whatever the
request's ``autopilot.team`` (``extra_body``), ``user`` or headers say; a repo the request
names must be one of the key's repos (403 ``repo_not_allowed``), and a key bound to exactly
one repo gives it to a request that names none; ``purpose: gate`` (which may name a policy
version) needs a key created with purpose ``gate`` (403 ``purpose_not_allowed``). The
spans, budgets and task records of the gateway read the request's context after this
step, so they all carry the key's attribution.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from serving.protocol import ParsedRequest, error_body
from store.keys import API_KEY_PREFIX, ApiKeyRecord, key_id_of

__all__ = [
    "AccessRefused",
    "Identity",
    "KeyRing",
    "attribute",
    "bearer_token",
]

KeyLookup = Callable[[str], ApiKeyRecord | None]


class AccessRefused(Exception):
    """A request refused for its key: 401 (no valid key) or 403 (outside the key's scope),
    answered in OpenAI's error shape (``as_error``)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        self.status = status
        self.code = code
        self.param = param
        super().__init__(message)

    def as_error(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status == 401 else "permission_error"
        return error_body(str(self), kind=kind, param=self.param, code=self.code)


def _invalid(message: str) -> AccessRefused:
    return AccessRefused(401, "invalid_api_key", message)


@dataclass(frozen=True)
class Identity:
    """The caller, as its key states it."""

    key_id: str
    team: str
    repos: tuple[str, ...]
    purpose: str  # "serve" or "gate"

    @classmethod
    def of(cls, record: ApiKeyRecord) -> Identity:
        return cls(record.key_id, record.team, tuple(record.repos), record.purpose)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (or ``api-key``, which Azure
    OpenAI clients send); None when there is none."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return value.strip()
    value = headers.get("api-key")
    return value.strip() if value and value.strip() else None


class KeyRing:
    """API keys as the gateway sees them: the store's, cached ``ttl_s`` seconds."""

    def __init__(self, lookup: KeyLookup, *, require: bool, ttl_s: float = 2.0,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._lookup = lookup
        self.require = require
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()
        self._used: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def _cached(self, key_id: str) -> tuple[bool, ApiKeyRecord | None]:
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is None or self._clock() - hit[0] >= self.ttl_s:
                return False, None
            return True, hit[1]

    def _remember(self, key_id: str, record: ApiKeyRecord | None) -> None:
        with self._lock:
            self._cache[key_id] = (self._clock(), record)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)

    def _record(self, key_id: str) -> ApiKeyRecord | None:
        found, record = self._cached(key_id)
        if not found:
            record = self._lookup(key_id)
            self._remember(key_id, record)
        return record

    async def _record_async(self, key_id: str) -> ApiKeyRecord | None:
        found, record = self._cached(key_id)
        if not found:
            record = await asyncio.to_thread(self._lookup, key_id)
            self._remember(key_id, record)
        return record

    def _check(self, token: str | None, key_id: str | None,
               record: ApiKeyRecord | None) -> Identity | None:
        if token is None or (key_id is None and not token.startswith(API_KEY_PREFIX)):
            if self.require:
                raise _invalid("this gateway requires an API key: send "
                               "'Authorization: Bearer ap-...' (autopilot keys create)")
            return None  # keys optional, and none presented: the request's own fields
        if key_id is None or record is None or not record.matches(token):
            raise _invalid("Incorrect API key provided")
        if record.revoked:
            raise _invalid(f"API key {record.key_id} has been revoked")
        with self._lock:
            self._used[record.key_id] = datetime.now(UTC)
        return Identity.of(record)

    def identify(self, headers: Mapping[str, str]) -> Identity | None:
        """The caller's identity, None for an anonymous call where keys are optional;
        ``AccessRefused`` (401) otherwise."""
        token = bearer_token(headers)
        key_id = key_id_of(token) if token else None
        record = self._record(key_id) if key_id else None
        return self._check(token, key_id, record)

    async def identify_async(self, headers: Mapping[str, str]) -> Identity | None:
        """``identify`` for an event loop: a store read (cache miss) runs in a thread."""
        token = bearer_token(headers)
        key_id = key_id_of(token) if token else None
        record = await self._record_async(key_id) if key_id else None
        return self._check(token, key_id, record)

    def take_used(self) -> dict[str, datetime]:
        """Last use per key id since the previous call (for ``mark_api_keys_used``)."""
        with self._lock:
            used, self._used = self._used, {}
        return used


def attribute(req: ParsedRequest, identity: Identity | None) -> ParsedRequest:
    """The request as the gateway serves it: attributed to ``identity``'s team and repo
    (``AccessRefused`` 403 for a repo or purpose outside the key); unchanged without one."""
    if identity is None:
        return req
    ctx = req.ctx
    repo = ctx.repo
    if repo is not None and identity.repos and repo not in identity.repos:
        raise AccessRefused(403, "repo_not_allowed",
                            f"autopilot.repo: API key {identity.key_id} is not allowed repo "
                            f"{repo[:80]!r} (allowed: {', '.join(identity.repos)})",
                            param="autopilot.repo")
    if repo is None and len(identity.repos) == 1:
        repo = identity.repos[0]
    if ctx.purpose == "gate" and identity.purpose != "gate":
        raise AccessRefused(403, "purpose_not_allowed",
                            f"autopilot.purpose: gate traffic needs a key created with "
                            f"purpose gate; API key {identity.key_id} is a "
                            f"{identity.purpose} key", param="autopilot.purpose")
    if ctx.team == identity.team and ctx.repo == repo:
        return req
    return replace(req, ctx=ctx.model_copy(update={"team": identity.team, "repo": repo}))
