"""The gateway's response cache (pure: no I/O, the clock is passed in).

Semantics (docs/serving.md, "Response cache"):

- A lookup or store happens only when the policy enables the response cache, the task's
  family is not in ``exclude_families``, the request did not ask to bypass it, and the
  call is a serving call (shadow calls never read or write it).
- The key (``CacheScope`` + prompt) covers everything that decides the output under
  deterministic decoding: the tier, variant and adapter, the sha256s of their weight and
  adapter files, the policy's content hash, and the decoding parameters. A promoted
  policy or a re-pinned weight file therefore never serves an older answer.
- ``exact`` mode serves an entry whose prompt is byte-identical. ``similarity`` mode (off
  unless the policy chooses it) also serves the most similar entry of the same scope
  whose character-trigram Jaccard similarity with the prompt is ``>= threshold``.
- Entries expire ``ttl_s`` after they were stored; beyond ``max_entries`` the least
  recently used entry is evicted.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CacheEntry",
    "CacheScope",
    "ResponseCache",
    "cache_allowed",
    "jaccard",
    "trigrams",
]


@dataclass(frozen=True)
class CacheScope:
    """Everything but the prompt that a cached answer depends on."""

    tier: str
    variant: str
    adapter: str | None
    weights_digest: str
    adapter_digest: str
    policy_hash: str
    max_tokens: int
    stop: tuple[str, ...]

    @property
    def digest(self) -> str:
        text = json.dumps([self.tier, self.variant, self.adapter, self.weights_digest,
                           self.adapter_digest, self.policy_hash, self.max_tokens,
                           list(self.stop)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.digest}\x00{prompt}".encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    prompt: str
    value: dict[str, Any]
    stored_at: float
    expires_at: float
    grams: frozenset[str] = field(default=frozenset(), compare=False)


def cache_allowed(spec: Any, family: str | None, *, request_mode: str = "use",
                  purpose: str = "serve") -> bool:
    """Whether this call may read or write the response cache (``spec``: ResponseCacheSpec)."""
    if not spec.enabled or request_mode != "use" or purpose == "shadow":
        return False
    return family is None or family not in set(spec.exclude_families)


def trigrams(text: str) -> frozenset[str]:
    """Character trigrams of ``text`` (padded, so short texts still have some)."""
    padded = f"  {text} "
    return frozenset(padded[i:i + 3] for i in range(len(padded) - 2))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class ResponseCache:
    """LRU + TTL map from (scope, prompt) to a stored response; see the module docstring."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._by_scope: dict[str, set[str]] = {}
        self._scope_of: dict[str, str] = {}
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._evict_over()

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)
        scope = self._scope_of.pop(key, None)
        if scope is not None:
            keys = self._by_scope.get(scope)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_scope[scope]

    def _evict_over(self) -> None:
        while len(self._entries) > self.max_entries:
            key = next(iter(self._entries))
            self._drop(key)
            self.evictions += 1

    def get(self, scope: CacheScope, prompt: str, now: float, *, mode: str = "exact",
            threshold: float = 1.0) -> tuple[CacheEntry, float] | None:
        """The entry to serve and its similarity (1.0 for an exact hit), or None."""
        key = scope.key(prompt)
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._drop(key)
            entry = None
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry, 1.0
        if mode == "similarity":
            found = self._most_similar(scope.digest, prompt, now, threshold)
            if found is not None:
                self.hits += 1
                return found
        self.misses += 1
        return None

    def _most_similar(self, scope_digest: str, prompt: str, now: float,
                      threshold: float) -> tuple[CacheEntry, float] | None:
        grams = trigrams(prompt)
        best: tuple[float, str] | None = None
        for key in list(self._by_scope.get(scope_digest, ())):
            entry = self._entries[key]
            if entry.expires_at <= now:
                self._drop(key)
                continue
            score = jaccard(grams, entry.grams)
            # Ties go to the older (smaller) key order only through max(): stable enough
            # because keys are content hashes; the score decides.
            if score >= threshold and (best is None or score > best[0]):
                best = (score, key)
        if best is None:
            return None
        self._entries.move_to_end(best[1])
        return self._entries[best[1]], best[0]

    def put(self, scope: CacheScope, prompt: str, value: dict[str, Any], now: float,
            ttl_s: float) -> None:
        key = scope.key(prompt)
        self._drop(key)
        self._entries[key] = CacheEntry(prompt, dict(value), now, now + ttl_s, trigrams(prompt))
        digest = scope.digest
        self._by_scope.setdefault(digest, set()).add(key)
        self._scope_of[key] = digest
        self._evict_over()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}


def stop_tuple(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)
