"""Capacity plan per tier from the Azure LLM inference code trace and the cost model.

    .venv/bin/python benchmarks/bench_capacity_azure.py --data /work/shared/data \
        --fleet controlplane/starter/fleet.yaml --mix S=0.7,M=0.2,L=0.1

A request keeps one replica busy for ``context / prefill_tokens_per_s + generated /
decode_tokens_per_s`` seconds (the cost model's busy time, from the fleet manifest's
economics). Per tier, the trace's share of requests (``--mix``: the tier mix a routing
policy implies) is spread over time; the replicas needed are the peak busy-seconds per
second over ``--window`` second windows, with ``--headroom``. Baseline in the same run:
sizing for the mean load (what a monthly average suggests), with the share of windows in
which it would be overloaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--fleet", default=str(Path(__file__).resolve().parent.parent
                                           / "controlplane" / "starter" / "fleet.yaml"))
    ap.add_argument("--mix", default="S=0.7,M=0.2,L=0.1")
    ap.add_argument("--window", type=float, default=60.0, help="seconds")
    ap.add_argument("--headroom", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from contracts.manifest import load_fleet

    path = Path(args.data) / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data pointing at the shared data")
    fleet = load_fleet(args.fleet)
    trace = pd.read_csv(path)
    t = pd.to_datetime(trace["TIMESTAMP"].str.slice(0, 26), format="mixed")
    secs = (t - t.min()).dt.total_seconds().to_numpy()
    ctx = trace["ContextTokens"].to_numpy(float)
    gen = trace["GeneratedTokens"].to_numpy(float)
    span = secs.max() + 1e-9
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(","))}
    unknown = [k for k in mix if k not in fleet.tier_names]
    if unknown:
        raise SystemExit(f"--mix names tiers the fleet lacks: {unknown} (has {fleet.tier_names})")
    rng = np.random.default_rng(args.seed)
    names = list(mix)
    assign = rng.choice(len(names), size=len(secs), p=np.array(list(mix.values())) / sum(mix.values()))
    bins = np.floor(secs / args.window).astype(int)
    n_bins = bins.max() + 1
    per_s = np.bincount(np.floor(secs).astype(int))
    print(f"{path.name}: {len(secs):,} requests over {span / 60:.1f} min; mean "
          f"{len(secs) / span:.2f} req/s, peak 1-s {per_s.max()} req/s, peak {args.window:.0f}-s "
          f"{np.bincount(bins).max() / args.window:.2f} req/s; mean context {ctx.mean():,.0f}, "
          f"generated {gen.mean():.0f} tokens")
    print(f"\n{'tier':5s} {'share':>6s} {'peak req/s':>10s} {'busy s/s peak':>13s} "
          f"{'replicas':>8s} {'GPUs':>5s} {'$/hour':>8s} {'util@mean':>9s} | "
          f"{'mean-sized GPUs':>15s} {'overloaded windows':>18s}")
    tot_gpu = tot_usd = tot_mean_gpu = 0.0
    for k, name in enumerate(names):
        e = fleet.economics(name)
        m = assign == k
        busy = ctx[m] / e.prefill_tokens_per_s + gen[m] / e.decode_tokens_per_s
        load = np.bincount(bins[m], weights=busy, minlength=n_bins) / args.window
        reqs = np.bincount(bins[m], minlength=n_bins) / args.window
        replicas = max(1, math.ceil(load.max() * (1 + args.headroom)))
        mean_replicas = max(1, math.ceil(busy.sum() / span))
        util = busy.sum() / span / replicas
        overloaded = float((load > mean_replicas).mean())
        gpus = replicas * e.gpus
        usd = gpus * e.usd_per_gpu_hour
        tot_gpu += gpus
        tot_usd += usd
        tot_mean_gpu += mean_replicas * e.gpus
        print(f"{name:5s} {mix[name]:6.2f} {reqs.max():10.2f} {load.max():13.2f} {replicas:8d} "
              f"{gpus:5.0f} {usd:8.2f} {100 * util:8.0f}% | {mean_replicas * e.gpus:15.0f} "
              f"{100 * overloaded:17.0f}%")
    print(f"{'total':5s} {'':6s} {'':10s} {'':13s} {'':8s} {tot_gpu:5.0f} {tot_usd:8.2f} "
          f"{'':9s} | {tot_mean_gpu:15.0f}")
    print(f"(peak over {args.window:.0f}-s windows, {100 * args.headroom:.0f}% headroom; "
          f"economics from {Path(args.fleet).name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
