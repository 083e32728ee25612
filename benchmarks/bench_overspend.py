"""Overspend of a team budget and a per-task $ cap through the real gateway with 2 replicas
(issue 14's closing figures; issue 15 defect 7), and what the shared ledger costs.

The stub fleet (``serving.stub_tiers``: tier deployments without an engine, 50 ms a call)
behind ``serving.fleet.start_fleet`` with 2 gateway replicas over the shared ledger actor.
For each concurrency, a fresh team with a budget of ``--calls`` calls and a fresh task with
a $ cap of ``--calls - 0.5`` calls get ``4 x --calls`` requests over HTTP; the figure is
spend / cap (1.0: exact; the bound is one reservation above it). Then the p50 latency of a
call at concurrency 1 with the shared ledger (2 replicas) against the in-process one (the
gateway redeployed with ``shared_state=False``, 1 replica), in the same run.

    .venv/bin/python benchmarks/bench_overspend.py [--calls 20] [--latency-requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "eval: 1+2\n="
MAX_TOKENS = 8


def post(url: str, task_id: str, team: str) -> tuple[int, float, float]:
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS,
            "autopilot": {"task_id": task_id, "attempt": 1, "family": "expr_eval", "team": team}}
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            cost = json.loads(reply.read())["autopilot"]["cost_usd"]
            return reply.status, cost, time.perf_counter() - started
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, 0.0, time.perf_counter() - started


def load(url: str, calls: list[tuple[str, str]], concurrency: int) -> list[tuple[int, float, float]]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda c: post(url, *c), calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()

    import ray
    from ray import serve

    from contracts.manifest import load_fleet
    from policies.policy import Policy
    from serving.fleet import SERVE_THROUGHPUT_ENV, free_port, start_fleet
    from serving.gateway import GATEWAY_APP, REPLICAS_ENV, gateway_application
    from serving.guardrails import call_cost_usd, worst_case_cost
    from serving.stub_tiers import deploy_stub_tiers
    from serving.testing import make_stub_fleet
    from serving.tiers import fleet_owner, required_deployments
    from store import Store

    concurrencies = (1, 16, 32)
    root = Path(tempfile.mkdtemp(prefix="bench-overspend-"))
    manifest = make_stub_fleet(root / "stub", tiers=("S", "M"), variants=("bf16",))
    fleet = load_fleet(manifest)
    call = call_cost_usd(fleet, "S", "bf16", input_tokens=len(PROMPT), cached_input_tokens=0,
                         output_tokens=2, cache="miss")
    reservation = worst_case_cost(fleet, "S", "bf16", prompt=PROMPT, max_tokens=MAX_TOKENS)[1]
    budget, cap = args.calls * call, (args.calls - 0.5) * call
    policy = Policy.model_validate({
        "metadata": {"version": 1, "author": "bench", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M"], "max_attempts": 3},
                 "guardrails": {"max_usd_per_task": cap, "team_budgets": {
                     f"c{c}": {"usd_per_day": budget} for c in concurrencies}}}})
    store_url = f"sqlite:///{root / 'autopilot.db'}"
    with Store.open(store_url) as store:
        store.put_policy(policy)
        store.activate(1, actor="bench", reason="overspend benchmark")
    os.environ.update({**SERVE_THROUGHPUT_ENV, REPLICAS_ENV: "2"})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        deploy_stub_tiers(required_deployments(policy, fleet), owner=fleet_owner(store_url))
        handle = start_fleet(manifest, store_url=store_url, reload_interval_s=1.0,
                             spans_path=root / "spans.jsonl")
        url = handle.url
        print(f"call ${call:.6f}, reservation ${reservation:.6f} "
              f"({reservation / call:.2f} calls); team budget {args.calls} calls, "
              f"task cap {args.calls - 0.5} calls; 2 gateway replicas, shared ledger")
        print("| concurrency | team spend / budget | team bound | task spend / cap | "
              "task bound |")
        print("|---|---|---|---|---|")
        for c in concurrencies:
            n = 4 * args.calls
            team = load(url, [(f"team{c}-{i}", f"c{c}") for i in range(n)], c)
            task = load(url, [(f"task{c}", "payments")] * n, c)
            team_ratio = sum(r[1] for r in team) / budget
            task_ratio = sum(r[1] for r in task) / cap
            print(f"| {c} | {team_ratio:.3f} | {1 + reservation / budget:.3f} | "
                  f"{task_ratio:.3f} | {1 + reservation / cap:.3f} |")

        def p50(prefix: str) -> float:
            for i in range(20):  # warm both replicas and the handles
                post(url, f"{prefix}-warm-{i}", "payments")
            times = [post(url, f"{prefix}-{i}", "payments")[2]
                     for i in range(args.latency_requests)]
            return statistics.median(times) * 1000

        shared = p50("shared")
        serve.delete(GATEWAY_APP)
        serve.run(gateway_application(handle.manifest_path, store_url,
                                      engine_options=handle.engine_options,
                                      spans_path=root / "spans-local.jsonl",
                                      reload_interval_s=1.0, owner=handle.owner,
                                      num_replicas=1, shared_state=False),
                  name=GATEWAY_APP, route_prefix="/")
        local = p50("local")
        print(f"\np50 latency at concurrency 1 ({args.latency_requests} calls): shared ledger "
              f"(2 replicas) {shared:.1f} ms, in-process (1 replica) {local:.1f} ms; "
              f"ratio {shared / local:.2f}x (+{shared - local:.1f} ms)")
        handle.shutdown()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
