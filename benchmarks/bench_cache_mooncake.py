"""Prefix (KV block) cache on the Mooncake traces: searched policy vs LRU vs Belady.

    .venv/bin/python benchmarks/bench_cache_mooncake.py --data /work/shared/data

Each request reads its prefix blocks (``hash_ids``, 512 tokens each) in order. A cache of
``capacity`` blocks is simulated under: LRU; Belady's optimal eviction (farthest next use,
which needs the future: an upper bound); and the policy an Optuna search (TPE, 40 trials)
picks on the first half of the trace from a scored-eviction family (priority = last access
+ a bonus for short prefix depth + a bonus for reuse count, TTL expiry), evaluated on the
second half. Reported on the second half at the same capacity: block hit rate (any cached
block) and prefix hit rate (blocks reusable by vLLM: the contiguous cached prefix), and
the prefill tokens the prefix hits save. Capacities are fractions of the distinct blocks of
the evaluation half. An infinite cache is shown as the ceiling (README: 36.6% of block
accesses on the whole conversation trace).
"""

from __future__ import annotations

import argparse
import heapq
import json
import time
from collections import OrderedDict
from pathlib import Path

BLOCK_TOKENS = 512


def load_trace(path: Path):
    reqs = []
    with path.open() as fh:
        for line in fh:
            r = json.loads(line)
            reqs.append((r["timestamp"] / 1000.0, r["input_length"], r["hash_ids"]))
    return reqs


def _tally(reqs, lookup):
    """Run requests through ``lookup(block, t, depth) -> hit``; count block and prefix hits."""
    accesses = block_hits = prefix_hits = prefix_tokens = 0
    for t, input_len, blocks in reqs:
        contiguous = True
        for depth, b in enumerate(blocks):
            hit = lookup(b, t, depth)
            accesses += 1
            block_hits += hit
            if hit and contiguous:
                prefix_hits += 1
                prefix_tokens += min(BLOCK_TOKENS, input_len - depth * BLOCK_TOKENS)
            else:
                contiguous = False
    n = max(accesses, 1)
    return {"block_hit": block_hits / n, "prefix_hit": prefix_hits / n,
            "saved_tokens": prefix_tokens, "accesses": accesses}


def lru(reqs, capacity, warm=()):
    cache: OrderedDict = OrderedDict()

    def lookup(b, t, depth):
        if b in cache:
            cache.move_to_end(b)
            return True
        cache[b] = True
        if len(cache) > capacity:
            cache.popitem(last=False)
        return False

    _tally(warm, lookup)
    return _tally(reqs, lookup)


def infinite(reqs, warm=()):
    seen = set()

    def lookup(b, t, depth):
        hit = b in seen
        seen.add(b)
        return hit

    _tally(warm, lookup)
    return _tally(reqs, lookup)


def belady(reqs, capacity, warm=()):
    seq = [b for _, _, blocks in [*warm, *reqs] for b in blocks]
    nxt = [0] * len(seq)
    last: dict = {}
    for i in range(len(seq) - 1, -1, -1):
        nxt[i] = last.get(seq[i], 1 << 60)
        last[seq[i]] = i
    cache: dict = {}
    heap: list = []
    pos = [0]

    def lookup(b, t, depth):
        i = pos[0]
        pos[0] += 1
        hit = b in cache
        cache[b] = nxt[i]
        heapq.heappush(heap, (-nxt[i], b))
        while len(cache) > capacity:
            neg, victim = heapq.heappop(heap)
            if cache.get(victim) == -neg:
                del cache[victim]
        return hit

    _tally(warm, lookup)
    return _tally(reqs, lookup)


def scored(reqs, capacity, params, warm=()):
    """Evict the lowest priority = last access + depth_bonus / (1 + depth) + freq_bonus *
    log(1 + uses); blocks idle longer than ttl_s are dropped first."""
    import math

    depth_bonus, freq_bonus, ttl = params["depth_bonus"], params["freq_bonus"], params["ttl_s"]
    cache: dict = {}  # block -> (priority, last access)
    uses: dict = {}
    heap: list = []

    def lookup(b, t, depth):
        hit = b in cache and t - cache[b][1] <= ttl
        uses[b] = uses.get(b, 0) + 1
        prio = t + depth_bonus / (1 + depth) + freq_bonus * math.log1p(uses[b])
        cache[b] = (prio, t)
        heapq.heappush(heap, (prio, b))
        while len(cache) > capacity:
            p, victim = heapq.heappop(heap)
            if victim in cache and cache[victim][0] == p:
                del cache[victim]
        return hit

    _tally(warm, lookup)
    return _tally(reqs, lookup)


def search_policy(train, capacity, trials, seed):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial):
        params = {"depth_bonus": trial.suggest_float("depth_bonus", 0.0, 600.0),
                  "freq_bonus": trial.suggest_float("freq_bonus", 0.0, 600.0),
                  "ttl_s": trial.suggest_categorical("ttl_s", [300, 900, 3600, 1e9])}
        return scored(train, capacity, params)["prefix_hit"]

    study.optimize(objective, n_trials=trials)
    return study.best_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--trace", default="conversation_trace.jsonl")
    ap.add_argument("--fractions", default="0.01,0.02,0.05")
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args(argv)
    path = Path(args.data) / "mooncake" / args.trace
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data pointing at the shared data")
    t0 = time.perf_counter()
    reqs = load_trace(path)
    half = len(reqs) // 2
    train, test = reqs[:half], reqs[half:]
    distinct = len({b for _, _, bl in test for b in bl})
    whole = infinite(reqs)
    ceiling = infinite(test, warm=train)
    print(f"{path.name}: {len(reqs)} requests; evaluation half: {ceiling['accesses']:,} block "
          f"accesses, {distinct:,} distinct blocks; infinite cache on the whole trace: "
          f"{100 * whole['block_hit']:.1f}% block hits (README: 36.6%)", flush=True)
    print(f"\n{'capacity':>16s} {'policy':44s} {'block hit':>9s} {'prefix hit':>10s} "
          f"{'prefill tokens saved':>21s}")
    for frac in [float(f) for f in args.fractions.split(",")]:
        cap = max(1, int(frac * distinct))
        picked = search_policy(train, cap, args.trials, seed=0)
        rows = [("LRU", lru(test, cap, warm=train)),
                ("searched: " + ", ".join(f"{k}={v:.0f}" if v < 1e8 else f"{k}=none" for k, v in picked.items()),
                 scored(test, cap, picked, warm=train)),
                ("Belady (optimal eviction, needs the future)", belady(test, cap, warm=train))]
        for name, r in rows:
            print(f"{cap:8,d} ({100 * frac:3.0f}%) {name:44s} {100 * r['block_hit']:8.1f}% "
                  f"{100 * r['prefix_hit']:9.1f}% {r['saved_tokens']:21,d}")
    print(f"{'infinite':>16s} {'(ceiling)':44s} {100 * ceiling['block_hit']:8.1f}% "
          f"{100 * ceiling['prefix_hit']:9.1f}% {ceiling['saved_tokens']:21,d}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
