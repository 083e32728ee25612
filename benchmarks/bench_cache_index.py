"""Response cache, similarity mode: the MinHash LSH index vs the full scan it replaced.

    .venv/bin/python benchmarks/bench_cache_index.py [--sizes 1000,10000,50000]
        [--thresholds 0.8,0.95] [--corpus long,workload]

For each corpus, threshold and cache size, one similarity scope is filled the way the
gateway fills it (a similarity lookup first, so every store is indexed), then:

- miss: a prompt unrelated to every entry; hit: a stored prompt with a few characters
  changed (its Jaccard to the stored one is at or above the threshold). Latency per lookup
  (p50 and p99, ms) through ``ResponseCache.get`` (index) and through ``scan_most_similar``
  (the scan that ``ResponseCache._most_similar`` did before the index: every entry of the
  scope, exact Jaccard). The whole lookup runs on the caller's thread, so its latency is
  also how long it holds the gateway replica's event loop.
- recall: up to 200 queries (fewer at 50k, where each scan is slow) with 0..6 edits of stored prompts (so their best Jaccard spreads around
  the threshold); of the queries whose best entry by the scan is at or above the threshold,
  the share the index serves with that same similarity; and the index's hits below the
  threshold (must be 0).
- put: mean time of a store into the indexed scope (trigrams, signature, LSH insert).

Corpora: ``long``: 250-500-character texts of random words (a chat/code prompt's length);
``workload``: the project's own task prompts (``workload.tasks``, ~25 characters, templated).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from math import nan

from serving.cache import CacheScope, ResponseCache, jaccard, lsh_params, trigrams

SCOPE = CacheScope("S", "bf16", None, "w", "", "p", 32, ())


def scan_most_similar(cache: ResponseCache, prompt: str, now: float, threshold: float):
    """The baseline: the scan the cache did before the index (every entry of the scope)."""
    grams = trigrams(prompt)
    best = None
    for key in list(cache._by_scope.get(SCOPE.digest, ())):
        entry = cache._entries[key]
        if entry.expires_at <= now:
            continue
        score = jaccard(grams, entry.grams)
        if score >= threshold and (best is None or score > best[0]):
            best = (score, key)
    return None if best is None else (cache._entries[best[1]], best[0])


def long_prompts(rng: random.Random, n: int) -> list[str]:
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(20_000)]
    out = []
    for _ in range(n):
        text, target = [], rng.randint(250, 500)
        while sum(len(w) + 1 for w in text) < target:
            text.append(rng.choice(words))
        out.append(" ".join(text))
    return out


def workload_prompts(rng: random.Random, n: int) -> list[str]:
    from workload.tasks import iter_tasks

    seen: dict[str, None] = {}
    for task in iter_tasks(seed=rng.randint(0, 1 << 30)):
        seen.setdefault(task.prompt, None)
        if len(seen) >= n:
            return list(seen)
    raise AssertionError("unreachable")


def edit(rng: random.Random, prompt: str, edits: int) -> str:
    chars = list(prompt)
    for _ in range(edits):
        chars[rng.randrange(len(chars))] = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return "".join(chars)


def near_duplicate(rng: random.Random, prompt: str, threshold: float) -> str | None:
    grams = trigrams(prompt)
    for edits in (2, 1):
        for _ in range(5):
            query = edit(rng, prompt, edits)
            if query != prompt and jaccard(trigrams(query), grams) >= threshold:
                return query
    return None


def timed(fn, queries):
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(fn(query))
        times.append((time.perf_counter() - started) * 1000.0)
    return times, results


def run(corpus: str, threshold: float, size: int, rng: random.Random, pool: list[str],
        queries: int, scan_queries: int) -> dict:
    stored = pool[:size]
    cache = ResponseCache(size + 1)
    cache.get(SCOPE, "\x00warm", 0.0, mode="similarity", threshold=threshold)
    started = time.perf_counter()
    for i, prompt in enumerate(stored):
        cache.put(SCOPE, prompt, {"text": str(i)}, 0.0, 1e9)
    put_us = (time.perf_counter() - started) / size * 1e6

    # New prompts (not stored): misses, except where the corpus is templated enough that
    # some come within the threshold of a stored one (the "served" share says how many).
    misses = [p for p in pool[size:size + 4 * queries]][:queries]
    hits = [q for q in (near_duplicate(rng, rng.choice(stored), threshold)
                        for _ in range(2 * queries)) if q is not None][:queries]

    def via_index(query):
        return cache.get(SCOPE, query, 1.0, mode="similarity", threshold=threshold)

    def via_scan(query):
        return scan_most_similar(cache, query, 1.0, threshold)

    row = {"corpus": corpus, "threshold": threshold, "entries": size, "put_us": put_us,
           "params": lsh_params(threshold)}
    for kind, batch in (("miss", misses), ("hit", hits)):
        if not batch:  # short prompts: no edit keeps them above a high threshold
            row.update({f"{kind}_index_p50": nan, f"{kind}_index_p99": nan,
                        f"{kind}_scan_p50": nan, f"{kind}_served": nan})
            continue
        index_ms, index_results = timed(via_index, batch)
        scan_ms, _ = timed(via_scan, batch[:scan_queries])
        row[f"{kind}_index_p50"] = statistics.median(index_ms)
        row[f"{kind}_index_p99"] = statistics.quantiles(index_ms, n=100)[98]
        row[f"{kind}_scan_p50"] = statistics.median(scan_ms)
        row[f"{kind}_served"] = sum(r is not None for r in index_results) / len(batch)

    # Recall against the scan on queries spread around the threshold.
    expected = found = below = 0
    for _ in range(min(200, max(20, 600_000 // size))):
        query = "~" + edit(rng, rng.choice(stored), rng.randint(0, 6))
        truth = scan_most_similar(cache, query, 1.0, threshold)
        got = via_index(query)
        if got is not None and got[1] < threshold:
            below += 1
        if truth is not None:
            expected += 1
            found += got is not None and got[1] == truth[1]
    row["recall"] = found / expected if expected else float("nan")
    row["recall_n"] = expected
    row["below_threshold_hits"] = below
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--thresholds", default="0.8,0.95")
    parser.add_argument("--corpus", default="long,workload")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--scan-queries", type=int, default=10,
                        help="lookups timed through the scan (it is slow at 50k)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print("| corpus | threshold (bands x rows) | entries | miss: index p50 / p99 ms | miss: scan "
          "p50 ms | scan/index | new served | hit: index p50 / p99 ms | hit: scan p50 ms | scan/index | "
          "recall vs scan (n) | hits below threshold | put us |")
    print("|" + "---|" * 13)
    for corpus in args.corpus.split(","):
        rng = random.Random(args.seed)
        pool_size = max(sizes) + 4 * args.queries
        pool = (long_prompts if corpus == "long" else workload_prompts)(rng, pool_size)
        for threshold in thresholds:
            for size in sizes:
                r = run(corpus, threshold, size, rng, pool, args.queries, args.scan_queries)
                bands, rows = r["params"]
                print(f"| {corpus} | {threshold} ({bands} x {rows}) | {size:,} | "
                      f"{r['miss_index_p50']:.3f} / {r['miss_index_p99']:.2f} | "
                      f"{r['miss_scan_p50']:.2f} | "
                      f"{r['miss_scan_p50'] / r['miss_index_p50']:.0f}x | "
                      f"{r['miss_served']:.0%} | "
                      f"{r['hit_index_p50']:.3f} / {r['hit_index_p99']:.2f} | "
                      f"{r['hit_scan_p50']:.2f} | "
                      f"{r['hit_scan_p50'] / r['hit_index_p50']:.0f}x | "
                      f"{r['recall']:.3f} ({r['recall_n']}) | {r['below_threshold_hits']} | "
                      f"{r['put_us']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
