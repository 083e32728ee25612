"""The similarity index of the response cache: found without a scan, same answers as the
scan, and kept consistent with eviction, expiry, resizing and scopes."""

import random

import pytest

import serving.cache as cache_module
from serving.cache import (
    RECALL_AT_THRESHOLD,
    CacheScope,
    ResponseCache,
    jaccard,
    lsh_params,
    trigrams,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 ,.:=[]"


def scope(**kw):
    base = {"tier": "S", "variant": "bf16", "adapter": None, "weights_digest": "w1",
            "adapter_digest": "", "policy_hash": "p1", "max_tokens": 32, "stop": ("\n",)}
    return CacheScope(**{**base, **kw})


def random_prompt(rng, length):
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def mutate(rng, prompt, edits):
    chars = list(prompt)
    for _ in range(edits):
        chars[rng.randrange(len(chars))] = rng.choice(ALPHABET)
    return "".join(chars)


def brute_force_best(stored_grams, prompt, threshold):
    grams = trigrams(prompt)
    best = max((jaccard(grams, other) for other in stored_grams), default=0.0)
    return best if best >= threshold else None


class CountingJaccard:
    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        return jaccard(a, b)


THRESHOLD_50K = 0.85


@pytest.fixture(scope="module")
def cache_50k():
    """50,000 entries in one similarity scope (the index exists before the puts, as in the
    gateway, where a similarity lookup precedes every store)."""
    rng = random.Random(7)
    cache = ResponseCache(60_000)
    assert cache.get(scope(), "warm", 0.0, mode="similarity", threshold=THRESHOLD_50K) is None
    prompts = [random_prompt(rng, 72) for _ in range(50_000)]
    for i, prompt in enumerate(prompts):
        cache.put(scope(), prompt, {"text": str(i)}, now=0.0, ttl_s=1e9)
    return cache, prompts


def test_near_duplicate_found_at_50k_entries_without_a_scan(cache_50k, monkeypatch):
    cache, prompts = cache_50k
    assert len(cache) == 50_000 and len(cache._indexes[scope().digest]) == 50_000
    target = prompts[12_345]
    near = target[:-1] + ("x" if target[-1] != "x" else "y")
    assert jaccard(trigrams(near), trigrams(target)) >= THRESHOLD_50K
    counting = CountingJaccard()
    monkeypatch.setattr(cache_module, "jaccard", counting)
    hit = cache.get(scope(), near, 1.0, mode="similarity", threshold=THRESHOLD_50K)
    assert hit is not None and hit[0].value == {"text": "12345"}
    assert hit[1] == jaccard(trigrams(near), trigrams(target))
    assert counting.calls < 50  # the scan computed 50,000


def test_below_threshold_not_served_at_50k_entries(cache_50k, monkeypatch):
    cache, prompts = cache_50k
    target = prompts[777]
    far = mutate(random.Random(1), target, 10)
    assert jaccard(trigrams(far), trigrams(target)) < THRESHOLD_50K
    counting = CountingJaccard()
    monkeypatch.setattr(cache_module, "jaccard", counting)
    assert cache.get(scope(), far, 1.0, mode="similarity", threshold=THRESHOLD_50K) is None
    assert counting.calls < 50


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.95])
def test_index_matches_the_brute_force_scan_on_a_random_corpus(threshold):
    rng = random.Random(int(threshold * 100))
    cache = ResponseCache(10_000)
    cache.get(scope(), "warm", 0.0, mode="similarity", threshold=threshold)
    bases = [random_prompt(rng, rng.randint(80, 400)) for _ in range(200)]
    stored = [mutate(rng, rng.choice(bases), rng.randint(0, 3)) for _ in range(1_000)]
    for i, prompt in enumerate(stored):
        cache.put(scope(), prompt, {"text": str(i)}, now=0.0, ttl_s=1e9)
    stored_grams = [trigrams(prompt) for prompt in stored]
    expected_hits = found = 0
    for _ in range(250):
        # at least one edit, so that no query is an exact (key) hit
        query = "~" + mutate(rng, rng.choice(bases), rng.randint(0, 5))
        expected = brute_force_best(stored_grams, query, threshold)
        hit = cache.get(scope(), query, 1.0, mode="similarity", threshold=threshold)
        if hit is not None:
            # a hit is always a true one: the exact Jaccard, at or above the threshold
            assert hit[1] == jaccard(trigrams(query), hit[0].grams) >= threshold
            assert expected is not None and hit[1] <= expected
        if expected is not None:
            expected_hits += 1
            found += hit is not None and hit[1] == expected
    assert expected_hits >= 50
    assert found / expected_hits >= 0.95


def test_eviction_and_resize_remove_entries_from_the_index():
    cache = ResponseCache(3)
    digest = scope().digest
    base = "list: sort [3,1,2,9,8,4,4,1,0]\n="
    cache.get(scope(), "warm", 0, mode="similarity", threshold=0.8)
    cache.put(scope(), base, {"text": "old"}, now=0, ttl_s=100)
    for i in range(3):
        cache.put(scope(), f"eval: {i} * {i} + {i}\n=", {"text": str(i)}, now=1 + i, ttl_s=100)
    assert cache.evictions == 1 and len(cache._indexes[digest]) == 3
    assert base not in {e.prompt for e in cache._entries.values()}
    assert cache.get(scope(), base[:-2] + "5\n=", 5, mode="similarity", threshold=0.8) is None
    cache.resize(1)
    assert len(cache) == 1 and len(cache._indexes[digest]) == 1
    cache.resize(0)
    assert len(cache) == 0 and digest not in cache._indexes


def test_expired_entry_is_not_served_and_leaves_the_index():
    cache = ResponseCache(10)
    digest = scope().digest
    cache.get(scope(), "warm", 0, mode="similarity", threshold=0.8)
    cache.put(scope(), "list: sort [3,1,2,9,8,4,4,1,0]\n=", {"text": "a"}, now=0, ttl_s=60)
    cache.put(scope(), "eval: 1 + 2 * 3\n=", {"text": "b"}, now=0, ttl_s=600)
    near = "list: sort [3,1,2,9,8,4,4,1,7]\n="
    assert cache.get(scope(), near, 59, mode="similarity", threshold=0.8) is not None
    assert cache.get(scope(), near, 60, mode="similarity", threshold=0.8) is None
    assert len(cache) == 1 and len(cache._indexes[digest]) == 1


def test_scopes_keep_separate_indexes():
    cache = ResponseCache(10)
    prompt = "list: sort [3,1,2,9,8,4,4,1,0]\n="
    cache.get(scope(), "warm", 0, mode="similarity", threshold=0.5)
    cache.put(scope(), prompt, {"text": "p1"}, now=0, ttl_s=100)
    other = scope(policy_hash="p2")
    assert cache.get(other, prompt + " ", 1, mode="similarity", threshold=0.5) is None
    cache.put(other, prompt, {"text": "p2"}, now=1, ttl_s=100)
    hit = cache.get(other, prompt + " ", 2, mode="similarity", threshold=0.5)
    assert hit is not None and hit[0].value == {"text": "p2"}
    hit = cache.get(scope(), prompt + " ", 2, mode="similarity", threshold=0.5)
    assert hit is not None and hit[0].value == {"text": "p1"}
    assert {len(index) for index in cache._indexes.values()} == {1}


def test_entries_stored_before_the_first_similarity_lookup_and_a_lower_threshold():
    cache = ResponseCache(10)
    cache.put(scope(), "list: sort [3,1,2,9,8]\n=", {"text": "x"}, now=0, ttl_s=100)
    near = "list: sort [3,1,2,9,7]\n="
    score = jaccard(trigrams(near), trigrams("list: sort [3,1,2,9,8]\n="))
    assert cache.get(scope(), near, 1, mode="similarity", threshold=0.95) is None
    assert cache._indexes[scope().digest].threshold == 0.95
    # a lower threshold than the index was built for rebuilds it, keeping the entries
    hit = cache.get(scope(), near, 1, mode="similarity", threshold=0.7)
    assert hit is not None and hit[1] == score
    assert cache._indexes[scope().digest].threshold == 0.7


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.7, 0.85, 0.9, 0.95, 0.99, 1.0])
def test_lsh_params_reach_the_recall_at_the_threshold(threshold):
    bands, rows = lsh_params(threshold)
    assert bands * rows <= 128 and bands >= 2
    assert 1 - (1 - threshold ** rows) ** bands >= RECALL_AT_THRESHOLD


def test_threshold_too_low_for_any_banding_falls_back_to_the_scan():
    assert lsh_params(0.01) is None
    cache = ResponseCache(10)
    cache.put(scope(), "abcdefghij", {"text": "x"}, now=0, ttl_s=100)
    hit = cache.get(scope(), "abcdefghiz", 1, mode="similarity", threshold=0.01)
    assert hit is not None and scope().digest not in cache._indexes
