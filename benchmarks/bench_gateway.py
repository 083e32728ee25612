"""Gateway overhead, fleet start time and resident memory of the embedded fleet.

    nice -n 10 .venv/bin/python benchmarks/bench_gateway.py [--fleet PATH] [--requests 128]

Starts the real fleet (local Ray, Ray Serve, one vLLM engine per tier, the gateway) on a
tiny random-weight fleet (``serving.testing.make_tiny_fleet``) unless ``--fleet`` names a
manifest (e.g. the trained reference fleet). Then, in the same run and against the same
engine (tier S), it sends the same prompts

- **direct**: through the tier deployment's Ray Serve handle (no HTTP, no gateway), and
- **gateway**: through HTTP ``POST /v1/completions`` with ``model: auto`` (routing,
  guardrails, pricing and the ``llm.call`` span included; the response cache is off),

at concurrency 1 and 16, and prints throughput, p50/p95 latency and the ratio. Memory is
the summed RSS and PSS (shared pages split between processes) of every process the fleet
started (Ray's GCS, raylet, Serve controller and proxy, replicas and vLLM engine cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_load(call, prompts: list[str], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(prompt: str) -> None:
        t0 = time.perf_counter()
        out = call(prompt)
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt * 1000)
            tokens[0] += out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    return {"rps": len(prompts) / wall, "tok_s": tokens[0] / wall,
            "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95),
            "n": len(prompts)}


def fleet_memory() -> dict[str, float]:
    import psutil

    rss = pss = 0
    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return {"processes": count, "rss_gib": rss / 2**30, "pss_gib": pss / 2**30}


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and every process the fleet started, by role."""
    import psutil

    out: dict[str, float] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            name = "bench client" if proc.pid == me.pid else " ".join(proc.cmdline())[:200]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = ("gateway replica" if "gateway" in name.lower() and "Replica" in name
                else "tier replicas" if "TierReplica" in name
                else "vLLM engine cores" if "EngineCore" in name or "spawn_main" in name
                else "Serve proxy" if "Proxy" in name
                else "bench client" if name == "bench client"
                else "Ray (gcs, raylet, controller, other)")
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], n: int) -> str:
    parts = [f"{role} {1000 * (after.get(role, 0) - before.get(role, 0)) / n:.2f}"
             for role in sorted(after)]
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=Path, default=None,
                        help="fleet manifest (default: a tiny random 3-tier fleet)")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    from contracts.manifest import load_fleet
    from policies.policy import Policy
    from serving.client import GatewayClient, TaskContext
    from serving.engine import EngineOptions
    from serving.fleet import start_fleet
    from serving.testing import make_tiny_fleet
    from serving.tiers import required_deployments
    from store import Store

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    manifest = args.fleet or make_tiny_fleet(work / "fleet", tiers=("S", "M", "L"))
    fleet = load_fleet(manifest)
    tiers = fleet.tier_names
    policy = Policy.model_validate({
        "metadata": {"version": 1, "author": "bench", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": tiers, "max_attempts": len(tiers)}},
    })
    store_url = f"sqlite:///{work / 'autopilot.db'}"
    with Store.open(store_url) as store:
        store.put_policy(policy)
        store.activate(1, actor="bench", reason="gateway benchmark")

    print(f"fleet: {manifest} ({len(tiers)} tiers: {', '.join(tiers)})", flush=True)
    t0 = time.perf_counter()
    handle = start_fleet(manifest, store_url=store_url, spans_path=work / "spans.jsonl",
                         engine_options=EngineOptions(kv_cache_bytes=64 << 20, max_num_seqs=16))
    start_s = time.perf_counter() - t0
    try:
        time.sleep(3)  # let start-up transients settle before reading memory
        mem = fleet_memory()
        print(f"fleet start: {start_s:.1f} s; memory: {mem['processes']} processes, "
              f"RSS {mem['rss_gib']:.2f} GiB, PSS {mem['pss_gib']:.2f} GiB", flush=True)

        from ray import serve

        key = next(k for k in required_deployments(policy, fleet) if k.tier == tiers[0])
        tier_handle = serve.get_app_handle(key.app_name)
        client = GatewayClient(handle.url, timeout_s=300)

        def direct(prompt: str) -> int:
            out = tier_handle.generate.remote({"prompt": prompt, "max_tokens": args.max_tokens,
                                               "stop": []}).result()
            return out["output_tokens"]

        counter = iter(range(10**9))

        def via_gateway(prompt: str) -> int:
            task = TaskContext(task_id=f"bench-{next(counter)}", family="expr_eval",
                               team="bench", response_cache="bypass")
            out = client.complete(prompt, task=task, max_tokens=args.max_tokens, stop=())
            assert out.tier == tiers[0]
            return out.output_tokens

        prompts = [f"eval: {i}+{i % 7}*{i % 5}\n=" for i in range(args.requests)]
        run_load(direct, prompts[:8], 4)  # warm both paths
        run_load(via_gateway, prompts[:8], 4)
        rows = []
        cpu_lines = []
        for concurrency in (1, 16):
            n = prompts if concurrency > 1 else prompts[: max(16, args.requests // 4)]
            c0 = process_cpu()
            d = run_load(direct, n, concurrency)
            c1 = process_cpu()
            g = run_load(via_gateway, n, concurrency)
            c2 = process_cpu()
            rows.append((concurrency, d, g))
            cpu_lines.append(f"CPU ms/request at concurrency {concurrency}: direct: "
                             f"{cpu_per_request(c0, c1, len(n))}\n  gateway: "
                             f"{cpu_per_request(c1, c2, len(n))}")
        print()
        print("| concurrency | path | requests | req/s | output tok/s | p50 ms | p95 ms |")
        print("|---|---|---|---|---|---|---|")
        for concurrency, d, g in rows:
            for name, r in (("direct (tier handle)", d), ("gateway (HTTP)", g)):
                print(f"| {concurrency} | {name} | {r['n']} | {r['rps']:.1f} | "
                      f"{r['tok_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
        print()
        for concurrency, d, g in rows:
            print(f"concurrency {concurrency}: gateway/direct throughput = "
                  f"{g['rps'] / d['rps']:.2f}x; p50 +{g['p50_ms'] - d['p50_ms']:.1f} ms")
        print("\n".join(cpu_lines))
        print(f"fleet start {start_s:.1f} s ({len(tiers)} tier engines + gateway); "
              f"resident memory RSS {mem['rss_gib']:.2f} GiB / PSS {mem['pss_gib']:.2f} GiB "
              f"over {mem['processes']} processes")
    finally:
        handle.shutdown()


if __name__ == "__main__":
    main()
