"""Gateway overhead beside the proxies users would pick instead, one engine's weights, one run.

    nice -n 10 .venv/bin/python benchmarks/bench_gateway_proxies.py [--max-tokens 128]

Makes a one-tier tiny random-weight fleet (``serving.testing.make_tiny_fleet``, tier S) and
serves the same weights with the same engine options four ways, all alive at once:

- **(a) vLLM direct**: vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``),
  its flags derived from the product's ``serving.engine.engine_kwargs`` (dtype, seed,
  context, ``max_num_seqs``, explicit KV cache, block size 32, eager, no prefix caching);
- **(b) LiteLLM -> (a)**: LiteLLM's proxy (``litellm --config``, one worker, no database)
  with (a) as its ``text-completion-openai/`` backend;
- **(d) tier handle**: the product's Ray Serve tier deployment (``TierReplica``: vLLM
  ``AsyncLLM`` in a Serve replica) called over its Serve handle, no HTTP;
- **(c) gateway -> (d)**: the product's gateway (``start_fleet``, a fixed policy routing
  everything to S; routing, guardrails, pricing and the ``llm.call`` span included, the
  response cache bypassed) over HTTP ``POST /v1/completions``.

(a)/(b) run in vLLM's server process; (c)/(d) in the product's Serve tier deployment: the
same weights and engine options, two engine instances. So each proxy is compared with its
own direct baseline: (b) against (a), (c) against (d).

Every request asks for ``--max-tokens`` tokens with greedy decoding. No path takes
``ignore_eos`` (the gateway serves no such parameter), so only prompts whose greedy output
runs the full length on (a) are used, and every response's completion token count is
checked: the table says how many tokens each path really produced per request.

LiteLLM conflicts with the product's pins (it would replace ``huggingface_hub`` and
``rich`` in ``.venv``), so it lives in its own venv, ``benchmarks/out/litellm-venv``
(git-ignored), which this script makes on first use. Every process started here (vLLM
server and its engine core, LiteLLM, the local Ray) is stopped on exit, error included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_gateway import percentile

LITELLM_VENV = ROOT / "benchmarks" / "out" / "litellm-venv"
MODEL_NAME = "tiny-s"
PATHS = ("vllm", "litellm", "handle", "gateway")
LABELS = {"vllm": "(a) vLLM server, direct", "litellm": "(b) LiteLLM proxy -> (a)",
          "handle": "(d) product tier deployment, Serve handle",
          "gateway": "(c) product gateway -> (d)"}
BASELINE = {"litellm": "vllm", "gateway": "handle"}

# A call: (prompt) -> output tokens the path reported.
Call = Callable[[str], Awaitable[int]]


class Processes:
    """Child processes, each in its own session, so a stop takes their children too."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        out = log.open("wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=log.parent)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # stragglers of the group, if any
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}; log tail:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s; log tail:\n"
                       + log.read_text(errors="replace")[-3000:])


def vllm_server_argv(kwargs: dict, port: int) -> list[str]:
    """The OpenAI server's command line for the product's engine kwargs (one to one)."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL_NAME,
            "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log"]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def ensure_litellm_venv() -> Path:
    python = LITELLM_VENV / "bin" / "python"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        print(f"making {LITELLM_VENV} with litellm[proxy] (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "litellm[proxy]"],
                       check=True)
    return LITELLM_VENV / "bin" / "litellm"


def litellm_config(vllm_port: int) -> str:
    return json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL_NAME, "litellm_params": {
            "model": f"text-completion-openai/{MODEL_NAME}",
            "api_base": f"http://127.0.0.1:{vllm_port}/v1", "api_key": "unused"}}],
        "litellm_settings": {"drop_params": False, "telemetry": False,
                             "request_timeout": 600},
    }, indent=1)


def litellm_env(master_key: str) -> dict[str, str]:
    env = dict(os.environ)
    # LiteLLM refuses to start without a master key; with no database it is a comparison.
    env.update(LITELLM_MASTER_KEY=master_key,
               LITELLM_LOCAL_MODEL_COST_MAP="True",  # no fetch of the price map
               LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True")
    env.pop("DATABASE_URL", None)
    return env


async def run_level(call: Call, prompts: list[str], concurrency: int
                    ) -> tuple[list[float], list[int], list[str], float]:
    """Send every prompt with ``concurrency`` in flight: latencies (ms) and output tokens of
    the answered ones, the failures, and the wall time (s)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                out = await call(prompt)
            except Exception as exc:  # noqa: BLE001 - a path's failures are a result: counted
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            tokens.append(out)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, tokens, errors, time.perf_counter() - t0


def summarise(latencies: list[float], tokens: list[int], errors: list[str], wall: float
              ) -> dict[str, float]:
    if errors:
        print(f"  {len(errors)} failed, first: {errors[0]}", flush=True)
    return {"n": len(latencies), "errors": len(errors), "rps": len(latencies) / wall,
            "p50": statistics.median(latencies), "p99": percentile(latencies, 99),
            "tokens": statistics.mean(tokens), "min_tokens": min(tokens)}


def engine_core_facts() -> list[str]:
    """Thread settings of every vLLM engine core below this process (engine-for-engine)."""
    import psutil

    facts = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if "EngineCore" not in cmd and "EngineCore" not in proc.name():
                continue
            env = proc.environ()
            facts.append(f"pid {proc.pid} ({proc.name()}): {proc.num_threads()} threads, "
                         f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, "
                         f"CPU affinity {proc.cpu_affinity()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return facts


async def bench(args, urls: dict[str, str], tier_handle) -> None:
    import aiohttp

    counter = iter(range(10**9))
    # A fresh client session (connection pool) per batch: a pooled connection left idle
    # while other paths run is closed by the server's keep-alive timeout, and reusing it
    # would fail the next request.
    sessions: list[aiohttp.ClientSession] = []

    async def run_fresh(call: Call, prompts: list[str], concurrency: int):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=900)) as session:
            sessions[:] = [session]
            return await run_level(call, prompts, concurrency)

    async def post(url: str, body: dict, headers: dict | None = None) -> dict:
        async with sessions[0].post(url, json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}: {str(data)[:500]}")
            return data

    def openai_body(prompt: str) -> dict:
        return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": args.max_tokens,
                "temperature": 0}

    async def vllm(prompt: str) -> int:
        data = await post(urls["vllm"], openai_body(prompt))
        return data["usage"]["completion_tokens"]

    async def litellm(prompt: str) -> int:
        data = await post(urls["litellm"], openai_body(prompt),
                          {"Authorization": f"Bearer {args.litellm_key}"})
        return data["usage"]["completion_tokens"]

    async def gateway(prompt: str) -> int:
        body = {"model": "auto", "prompt": prompt, "max_tokens": args.max_tokens,
                "temperature": 0, "stop": [],
                "autopilot": {"task_id": f"bench-{next(counter)}", "family": "expr_eval",
                              "team": "bench", "response_cache": "bypass"}}
        data = await post(urls["gateway"], body)
        assert data["autopilot"]["tier"] == "S", data["autopilot"]
        return data["usage"]["completion_tokens"]

    async def handle(prompt: str) -> int:
        out = await tier_handle.generate.remote(
            {"prompt": prompt, "max_tokens": args.max_tokens, "stop": []})
        return out["output_tokens"]

    calls: dict[str, Call] = {"vllm": vllm, "litellm": litellm, "handle": handle,
                              "gateway": gateway}

    # Prompts whose greedy output runs the full length (the model stops at EOS otherwise).
    candidates = [f"eval: {i}+{i % 7}*{i % 5}\n=" for i in range(4 * args.requests)]
    full: list[str] = []
    for start in range(0, len(candidates), 64):
        batch = candidates[start:start + 64]
        async with aiohttp.ClientSession() as session:
            sessions[:] = [session]
            counts = await asyncio.gather(*(vllm(p) for p in batch))
        full += [p for p, n in zip(batch, counts, strict=True) if n == args.max_tokens]
        if len(full) >= args.requests:
            break
    if len(full) < args.requests:
        raise RuntimeError(f"only {len(full)} of {len(candidates)} prompts reach "
                           f"{args.max_tokens} output tokens; lower --max-tokens")
    prompts = full[:args.requests]
    print(f"{len(prompts)} prompts that run the full {args.max_tokens} tokens", flush=True)

    for name in PATHS:  # warm every path (connections, replicas, engine graphs)
        _, _, errors, _ = await run_fresh(calls[name], prompts[:32], 16)
        if errors:
            raise RuntimeError(f"{name} fails in the warm-up: {errors[0]}")

    results: dict[tuple[int, str], dict[str, float]] = {}
    for concurrency in args.concurrency:
        n = args.requests if concurrency > 1 else args.requests_c1
        level_prompts = prompts[:n]
        pooled: dict[str, tuple[list[float], list[int], list[str], float]] = {
            name: ([], [], [], 0.0) for name in PATHS}
        # Rounds in alternating order, so drift in the shared machine's load falls on
        # every path alike; each round sends its share of the prompts.
        for r in range(args.rounds):
            order = PATHS if r % 2 == 0 else tuple(reversed(PATHS))
            share = level_prompts[r::args.rounds]
            for name in order:
                lat, tok, err, wall = await run_fresh(calls[name], share, concurrency)
                acc = pooled[name]
                pooled[name] = (acc[0] + lat, acc[1] + tok, acc[2] + err, acc[3] + wall)
        for name in PATHS:
            results[concurrency, name] = summarise(*pooled[name])
            r = results[concurrency, name]
            print(f"c={concurrency} {name}: {r['rps']:.2f} req/s p50 {r['p50']:.0f} ms "
                  f"p99 {r['p99']:.0f} ms tokens {r['tokens']:.1f}", flush=True)
    print_table(args, results)


def print_table(args, results: dict[tuple[int, str], dict[str, float]]) -> None:
    print()
    print(f"output length: {args.max_tokens} tokens per request (greedy, checked per response)")
    print()
    print("| concurrency | path | answered | failed | out tok/req | req/s | p50 ms | p99 ms | "
          "added p50 ms | added p99 ms | throughput vs direct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        for name in PATHS:
            r = results[concurrency, name]
            base = results.get((concurrency, BASELINE.get(name, name)))
            if name in BASELINE:
                added = (f"{r['p50'] - base['p50']:+.1f} | {r['p99'] - base['p99']:+.1f} | "
                         f"{r['rps'] / base['rps']:.2f}x")
            else:
                added = "baseline | baseline | 1.00x"
            print(f"| {concurrency} | {LABELS[name]} | {r['n']} | {r['errors']} | "
                  f"{r['tokens']:.0f} | "
                  f"{r['rps']:.2f} | {r['p50']:.1f} | {r['p99']:.1f} | {added} |")
    print()
    for concurrency in args.concurrency:
        g, d = results[concurrency, "gateway"], results[concurrency, "handle"]
        lite, v = results[concurrency, "litellm"], results[concurrency, "vllm"]
        print(f"c={concurrency}: added p50 gateway {g['p50'] - d['p50']:+.1f} ms vs LiteLLM "
              f"{lite['p50'] - v['p50']:+.1f} ms; added p99 gateway {g['p99'] - d['p99']:+.1f}"
              f" ms vs LiteLLM {lite['p99'] - v['p99']:+.1f} ms; throughput gateway "
              f"{g['rps'] / d['rps']:.2f}x of (d), {g['rps'] / v['rps']:.2f}x of (a); "
              f"LiteLLM {lite['rps'] / v['rps']:.2f}x of (a)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=200, help="per path at concurrency > 1")
    parser.add_argument("--requests-c1", type=int, default=50, help="per path at concurrency 1")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per level, in alternating path order")
    parser.add_argument("--max-num-seqs", type=int, default=16,
                        help="engine batch (the product's EngineOptions default)")
    args = parser.parse_args()
    args.litellm_key = f"sk-bench-{secrets.token_hex(16)}"

    from contracts.manifest import load_fleet
    from policies.policy import Policy
    from serving.engine import EngineOptions, engine_kwargs, verify_variant
    from serving.testing import make_tiny_fleet
    from store import Store

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    litellm_bin = ensure_litellm_venv()
    work = Path(tempfile.mkdtemp(prefix="bench-proxies-"))
    manifest_path = make_tiny_fleet(work / "fleet", tiers=("S",))
    fleet = load_fleet(manifest_path)
    options = EngineOptions(kv_cache_bytes=64 << 20, max_num_seqs=args.max_num_seqs)
    pinned = verify_variant(fleet, manifest_path.parent, "S")
    kwargs = engine_kwargs(pinned, prefix_caching=False, options=options, on_cpu=True)

    policy = Policy.model_validate({
        "metadata": {"version": 1, "author": "bench", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S"], "max_attempts": 1}},
    })
    store_url = f"sqlite:///{work / 'autopilot.db'}"
    with Store.open(store_url) as store:
        store.put_policy(policy)
        store.activate(1, actor="bench", reason="gateway vs proxies benchmark")

    processes = Processes()
    fleet_handle = None
    finished = False
    # A SIGTERM (e.g. a timeout) must still run the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        vllm_port, litellm_port = free_port(), free_port()
        vllm_env = dict(os.environ)
        vllm_env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # as TierEngine.start does
        vllm_log = work / "vllm-server.log"
        vllm_proc = processes.start(vllm_server_argv(kwargs, vllm_port), vllm_log, vllm_env)
        config = work / "litellm.yaml"
        config.write_text(litellm_config(vllm_port))
        litellm_log = work / "litellm.log"
        litellm_proc = processes.start(
            [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1",
             "--port", str(litellm_port), "--num_workers", "1"],
            litellm_log, litellm_env(args.litellm_key))
        print(f"fleet {manifest_path}; vLLM server :{vllm_port}; LiteLLM :{litellm_port}; "
              f"logs in {work}", flush=True)

        from serving.fleet import start_fleet
        from serving.tiers import required_deployments

        t0 = time.perf_counter()
        fleet_handle = start_fleet(manifest_path, store_url=store_url,
                                   spans_path=work / "spans.jsonl", engine_options=options)
        print(f"product fleet up in {time.perf_counter() - t0:.0f} s", flush=True)
        wait_http_ok(f"http://127.0.0.1:{vllm_port}/health", vllm_proc, vllm_log, 600)
        wait_http_ok(f"http://127.0.0.1:{litellm_port}/health/liveliness", litellm_proc,
                     litellm_log, 300)
        print(f"all four paths up at {time.perf_counter() - t_start:.0f} s", flush=True)
        for fact in engine_core_facts():
            print(f"engine core {fact}", flush=True)

        from ray import serve

        (key,) = required_deployments(policy, fleet)
        tier_handle = serve.get_app_handle(key.app_name)
        urls = {"vllm": f"http://127.0.0.1:{vllm_port}/v1/completions",
                "litellm": f"http://127.0.0.1:{litellm_port}/v1/completions",
                "gateway": f"{fleet_handle.url.rstrip('/')}/v1/completions"}
        asyncio.run(bench(args, urls, tier_handle))
        print(f"\nengine: {json.dumps(kwargs)}")
        print(f"load average (1 min) before {load_before[0]:.1f}, after "
              f"{os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f} s")
        finished = True
    finally:
        if fleet_handle is not None:
            fleet_handle.shutdown()
        processes.stop_all()
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
