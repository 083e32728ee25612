from policies.policy import ResponseCacheSpec
from serving.cache import CacheScope, ResponseCache, cache_allowed, jaccard, trigrams


def scope(**kw):
    base = dict(tier="S", variant="bf16", adapter=None, weights_digest="w1", adapter_digest="",
                policy_hash="p1", max_tokens=32, stop=("\n",))
    return CacheScope(**{**base, **kw})


def test_key_changes_with_every_component_that_decides_the_output():
    base = scope()
    variants = [scope(tier="M"), scope(variant="int8"), scope(adapter="a"),
                scope(weights_digest="w2"), scope(adapter_digest="x"), scope(policy_hash="p2"),
                scope(max_tokens=16), scope(stop=())]
    keys = {base.key("prompt")} | {s.key("prompt") for s in variants}
    assert len(keys) == 1 + len(variants)
    assert base.key("prompt") == scope().key("prompt")
    assert base.key("prompt") != base.key("prompt ")


def test_exact_hit_then_ttl_expiry():
    cache = ResponseCache(10)
    cache.put(scope(), "p", {"text": "a"}, now=100.0, ttl_s=60)
    entry, similarity = cache.get(scope(), "p", now=159.0)
    assert entry.value == {"text": "a"} and similarity == 1.0
    assert cache.get(scope(), "p", now=160.0) is None
    assert len(cache) == 0


def test_lru_eviction_beyond_max_entries():
    cache = ResponseCache(2)
    for i, prompt in enumerate(["a", "b"]):
        cache.put(scope(), prompt, {"text": prompt}, now=i, ttl_s=100)
    assert cache.get(scope(), "a", now=3) is not None  # "a" is now the most recent
    cache.put(scope(), "c", {"text": "c"}, now=4, ttl_s=100)
    assert cache.get(scope(), "b", now=5) is None and cache.get(scope(), "a", now=5)
    assert cache.evictions == 1
    cache.resize(1)
    assert len(cache) == 1


def test_similarity_mode_serves_a_near_prompt_above_the_threshold_only():
    cache = ResponseCache(10)
    cache.put(scope(), "list: sort [3,1,2,9,8]\n=", {"text": "x"}, now=0, ttl_s=100)
    near = "list: sort [3,1,2,9,7]\n="
    far = "eval: 1+2\n="
    assert cache.get(scope(), near, now=1) is None  # exact mode: no hit
    hit = cache.get(scope(), near, now=1, mode="similarity", threshold=0.7)
    assert hit is not None and 0.7 <= hit[1] < 1.0
    assert cache.get(scope(), near, now=1, mode="similarity", threshold=0.99) is None
    assert cache.get(scope(), far, now=1, mode="similarity", threshold=0.3) is None
    # another scope (other policy hash) never serves it, however similar
    assert cache.get(scope(policy_hash="p2"), near, now=1, mode="similarity",
                     threshold=0.1) is None


def test_trigram_jaccard():
    assert jaccard(trigrams("abc"), trigrams("abc")) == 1.0
    assert jaccard(trigrams("abc"), trigrams("xyz")) == 0.0
    assert 0 < jaccard(trigrams("abcd"), trigrams("abce")) < 1


def test_cache_allowed_rules():
    on = ResponseCacheSpec(enabled=True, exclude_families=["bracket_fix"])
    assert cache_allowed(on, "list_ops")
    assert not cache_allowed(on, "bracket_fix")
    assert not cache_allowed(on, "list_ops", request_mode="bypass")
    assert not cache_allowed(on, "list_ops", purpose="shadow")
    assert not cache_allowed(ResponseCacheSpec(enabled=False), "list_ops")
