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

Similarity lookups do not scan the scope: each scope that has seen a similarity lookup
keeps a MinHash LSH index (``datasketch``) of its entries' trigram sets. The index only
proposes candidates; the hit is still chosen by the exact trigram Jaccard, so a served
entry's similarity is the true one and is never below the threshold. The bands/rows are
chosen from the threshold (``lsh_params``) so that a pair exactly at the threshold becomes
a candidate with probability >= 0.995 (higher above it). A threshold too low for any
banding to reach that falls back to the exact scan.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from datasketch import MinHash

__all__ = [
    "CacheEntry",
    "CacheScope",
    "ResponseCache",
    "cache_allowed",
    "jaccard",
    "lsh_params",
    "trigrams",
]

# MinHash signature length: 128 keeps one signature at ~90 us for a 400-character prompt
# while the per-band collision probability stays close to the true Jaccard power.
SIGNATURE_PERMUTATIONS = 128
# Probability that an entry whose Jaccard equals the threshold becomes a candidate.
RECALL_AT_THRESHOLD = 0.995
# Above this many LSH candidates, the MinHash estimate pre-filters them before the exact
# Jaccard; the margin (in standard errors of the estimate) keeps a true hit's chance of
# being dropped below 1e-4.
_PREFILTER_ABOVE = 32
_PREFILTER_SIGMAS = 4.0


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


def lsh_params(threshold: float, permutations: int = SIGNATURE_PERMUTATIONS,
               recall: float = RECALL_AT_THRESHOLD) -> tuple[int, int] | None:
    """(bands, rows) for an LSH index serving ``threshold``, or None when none fits.

    A pair of Jaccard ``s`` becomes a candidate with probability ``1 - (1 - s**rows)**bands``.
    Among the bandings of at most ``permutations`` hashes whose probability at ``threshold``
    is ``>= recall``, the one with the most rows per band (and the fewest bands that reach
    the recall for it) has the steepest curve: fewest candidates below the threshold and
    fewest buckets to keep.
    """
    best: tuple[int, int] | None = None
    for rows in range(1, permutations + 1):
        band_hit = threshold ** rows
        if band_hit >= 1.0:
            bands = 2
        elif band_hit <= 0.0:
            break
        else:
            bands = max(2, math.ceil(math.log(1.0 - recall) / math.log1p(-band_hit)))
        if bands * rows <= permutations:
            best = (bands, rows)
    return best


def _gram_hash(gram: str) -> int:
    # Stable across processes (unlike hash()) and in C; MinHash mixes it before permuting.
    return zlib.crc32(gram.encode("utf-8", "surrogatepass"))


class _SimilarityIndex:
    """One scope's MinHash LSH over its entries' trigram sets, plus their signatures."""

    def __init__(self, threshold: float, params: tuple[int, int]):
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.bands, self.rows = params
        self._lsh = MinHashLSH(num_perm=SIGNATURE_PERMUTATIONS, params=params)
        self._empty = MinHash(num_perm=SIGNATURE_PERMUTATIONS, hashfunc=_gram_hash)
        self._signatures = np.empty((64, SIGNATURE_PERMUTATIONS), dtype=np.uint32)
        self._slot_of: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._margin = _PREFILTER_SIGMAS * math.sqrt(
            threshold * (1.0 - threshold) / SIGNATURE_PERMUTATIONS)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, key: str) -> bool:
        return key in self._slot_of

    def signature(self, grams: frozenset[str]) -> MinHash:
        minhash = self._empty.copy()
        minhash.update_batch(grams)
        return minhash

    def add(self, key: str, grams: frozenset[str]) -> None:
        self.add_signature(key, self.signature(grams))

    def add_signature(self, key: str, minhash: MinHash) -> None:
        if key in self._slot_of:
            self.remove(key)
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._slot_of)
            if slot == len(self._signatures):
                grown = np.empty((2 * slot, SIGNATURE_PERMUTATIONS), dtype=np.uint32)
                grown[:slot] = self._signatures
                self._signatures = grown
        self._signatures[slot] = minhash.hashvalues
        self._slot_of[key] = slot
        self._lsh.insert(key, minhash, check_duplication=False)

    def remove(self, key: str) -> None:
        slot = self._slot_of.pop(key, None)
        if slot is not None:
            self._lsh.remove(key)
            self._free_slots.append(slot)

    def signatures(self) -> dict[str, MinHash]:
        """Every entry's signature, to rebuild the index for another threshold."""
        out = {}
        for key, slot in self._slot_of.items():
            minhash = self._empty.copy()
            minhash.hashvalues = self._signatures[slot].copy()
            out[key] = minhash
        return out

    def candidates(self, grams: frozenset[str], threshold: float) -> list[str]:
        """Keys that may reach ``threshold``; the caller checks the exact Jaccard."""
        minhash = self.signature(grams)
        keys = self._lsh.query(minhash)
        if len(keys) <= _PREFILTER_ABOVE:
            return keys
        slots = np.fromiter((self._slot_of[k] for k in keys), dtype=np.intp, count=len(keys))
        estimate = (self._signatures[slots] == minhash.hashvalues).mean(axis=1)
        keep = np.flatnonzero(estimate >= threshold - self._margin)
        return [keys[i] for i in keep]


class ResponseCache:
    """LRU + TTL map from (scope, prompt) to a stored response; see the module docstring."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._by_scope: dict[str, set[str]] = {}
        self._scope_of: dict[str, str] = {}
        # Only scopes that have seen a similarity lookup pay for an index.
        self._indexes: dict[str, _SimilarityIndex] = {}
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
            index = self._indexes.get(scope)
            if index is not None:
                index.remove(key)
            keys = self._by_scope.get(scope)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_scope[scope]
                    self._indexes.pop(scope, None)

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
        index = self._index_for(scope_digest, threshold)
        if index is None:
            keys = list(self._by_scope.get(scope_digest, ()))
        else:
            keys = index.candidates(grams, threshold)
        best: tuple[float, str] | None = None
        for key in keys:
            entry = self._entries[key]
            if entry.expires_at <= now:
                self._drop(key)
                continue
            score = jaccard(grams, entry.grams)
            if score >= threshold and (best is None or score > best[0]):
                best = (score, key)
        if best is None:
            return None
        self._entries.move_to_end(best[1])
        return self._entries[best[1]], best[0]

    def _index_for(self, scope_digest: str, threshold: float) -> _SimilarityIndex | None:
        """The scope's index, built (or rebuilt) when it cannot serve ``threshold``.

        An index built for a lower threshold serves a higher one with at least the same
        recall, so only a lower threshold rebuilds (from the kept signatures). In the gateway
        the threshold is part of the policy and so of the scope: one build per scope, empty.
        """
        index = self._indexes.get(scope_digest)
        if index is not None and index.threshold <= threshold:
            return index
        params = lsh_params(threshold)
        if params is None:
            return None
        rebuilt = _SimilarityIndex(threshold, params)
        signatures = index.signatures() if index is not None else {}
        for key in self._by_scope.get(scope_digest, ()):
            if key in signatures:
                rebuilt.add_signature(key, signatures[key])
            else:
                rebuilt.add(key, self._entries[key].grams)
        self._indexes[scope_digest] = rebuilt
        return rebuilt

    def put(self, scope: CacheScope, prompt: str, value: dict[str, Any], now: float,
            ttl_s: float) -> None:
        key = scope.key(prompt)
        self._drop(key)
        self._entries[key] = CacheEntry(prompt, dict(value), now, now + ttl_s, trigrams(prompt))
        digest = scope.digest
        self._by_scope.setdefault(digest, set()).add(key)
        self._scope_of[key] = digest
        index = self._indexes.get(digest)
        if index is not None:
            index.add(key, self._entries[key].grams)
        self._evict_over()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}


def stop_tuple(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)
