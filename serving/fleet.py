"""Start and stop the serving fleet: local Ray (or a cluster), the tier deployments the
policy needs, and the gateway.

``start_fleet`` is what ``autopilot serve``, the integration tests, the gates and the
benchmarks call. It returns a ``FleetHandle`` with the gateway URL. A gateway that listens
beyond loopback must require API keys (``serving.apikeys``): ``start_fleet`` refuses to
start one that would not (``check_listen``), before Ray starts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError, TransientError
from policies.policy import Policy
from serving.engine import EngineOptions

__all__ = ["FleetHandle", "FleetStartError", "check_listen", "free_port", "is_loopback",
           "start_fleet"]

_log = logging.getLogger(__name__)


# Ray Serve's throughput mode (Ray >= 2.55): replica user code on the replica's own loop
# and gRPC between replicas, which roughly halves the gateway hop's cost on a small host.
# The router keeps its own loop so plain (non-async) callers can still use handles.
SERVE_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}


class FleetStartError(PermanentError):
    """The fleet could not start (no active policy, a tier refused to start ...)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``) or ``localhost``;
    anything else (``0.0.0.0``, ``::``, a name, an interface's address) is beyond it."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_listen(host: str, require_keys: bool) -> None:
    """Refuse a gateway that would listen beyond loopback without requiring API keys."""
    if not require_keys and not is_loopback(host):
        raise FleetStartError(
            f"the gateway would listen on {host!r}, beyond loopback, without requiring API "
            "keys: anyone who can reach it could spend any team's budget under any name. "
            "Require keys (--require-keys, or require_api_keys: true in autopilot.yaml) and "
            "create them with `autopilot keys create --team T`, or listen on 127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FleetHandle:
    url: str
    manifest_path: Path
    store_url: str
    engine_options: EngineOptions
    started_ray: bool
    start_s: float
    deployed: list[str] = field(default_factory=list)
    _closed: bool = False

    def ensure_variants(self, policy: Policy) -> list[str]:
        """Deploy every tier deployment ``policy`` needs that is not running yet (gates call
        it for a candidate before sending its traffic). Returns the applications started."""
        from contracts.manifest import load_fleet
        from serving.tiers import deploy_tiers, required_deployments, running_apps

        fleet = load_fleet(self.manifest_path)
        needed = required_deployments(policy, fleet)
        running = running_apps()
        missing = [k for k in needed if running.get(k.app_name) != "RUNNING"]
        if missing:
            deploy_tiers(self.manifest_path, missing, self.engine_options)
            self.deployed.extend(k.app_name for k in missing)
        return [k.app_name for k in missing]

    def shutdown(self) -> None:
        """Stop the gateway and every tier deployment; stop Ray if this handle started it."""
        if self._closed:
            return
        self._closed = True
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if self.started_ray and ray.is_initialized():
                ray.shutdown()

    def __enter__(self) -> FleetHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _wait_healthy(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise TransientError(f"gateway at {url} did not answer /healthz within {timeout_s}s: {last}")


def start_fleet(manifest_path: str | Path, *, store_url: str, policy_version: int | None = None,
                http_port: int = 0, ray_address: str | None = None,
                spans_path: str | Path | None = None, reload_interval_s: float = 2.0,
                engine_options: EngineOptions | None = None, otlp_endpoint: str | None = None,
                num_cpus: int | None = 2, host: str = "127.0.0.1", seed: int = 0,
                throughput_optimized: bool = True,
                collector: dict[str, Any] | None = None,
                require_keys: bool = False) -> FleetHandle:
    """Start the fleet for the active policy (or ``policy_version``) and return its handle.

    Starts local Ray (``address="local"``) unless ``ray_address`` is given; ``http_port=0``
    picks a free port. Spans go to ``otlp_endpoint`` (or the OTEL_EXPORTER_OTLP_* variables)
    and otherwise to ``spans_path`` as JSON lines. ``throughput_optimized`` turns on Ray
    Serve's throughput mode for a local Ray this call starts (a cluster keeps its own).
    ``require_keys``: every call needs a valid API key (required beyond loopback).
    """
    check_listen(host, require_keys)
    import ray

    if throughput_optimized and ray_address is None and not ray.is_initialized():
        for name, value in SERVE_THROUGHPUT_ENV.items():
            os.environ.setdefault(name, value)  # read by the Serve actors Ray starts
    from ray import serve

    from contracts.manifest import load_fleet
    from serving.tiers import TierStartFailed, deploy_tiers, required_deployments
    from store import Store

    started = time.monotonic()
    manifest_path = Path(manifest_path).resolve()
    fleet = load_fleet(manifest_path)
    engine_options = engine_options or EngineOptions()
    with Store.open(store_url) as store:
        if policy_version is not None:
            policy = store.get_policy(policy_version).policy
        else:
            record = store.active_policy()
            if record is None:
                raise FleetStartError(f"the store {store.url} has no active policy: "
                                      "run `autopilot init` or activate a policy")
            policy = record.policy
    from policies.policy import validate_against_fleet

    validate_against_fleet(policy, fleet)
    try:  # refuses a policy that needs an API-priced tier before Ray or any engine starts
        keys = required_deployments(policy, fleet)
    except TierStartFailed as exc:
        raise FleetStartError(str(exc)) from exc

    started_ray = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=True)
            started_ray = True
    port = http_port or free_port()
    serve.start(http_options={"host": host, "port": port})
    handle = FleetHandle(url=f"http://{host}:{port}", manifest_path=manifest_path,
                         store_url=store_url, engine_options=engine_options,
                         started_ray=started_ray, start_s=0.0)
    try:
        _log.info("starting %d tier deployment(s): %s", len(keys),
                  ", ".join(k.app_name for k in keys))
        try:
            deploy_tiers(manifest_path, keys, engine_options)
        except TierStartFailed as exc:
            raise FleetStartError(str(exc)) from exc
        handle.deployed.extend(k.app_name for k in keys)
        from serving.gateway import GATEWAY_APP, gateway_application

        serve.run(gateway_application(manifest_path, store_url, engine_options=engine_options,
                                      spans_path=spans_path, otlp_endpoint=otlp_endpoint,
                                      reload_interval_s=reload_interval_s,
                                      policy_version=policy_version, seed=seed,
                                      collector=collector, require_keys=require_keys),
                  name=GATEWAY_APP, route_prefix="/")
        _wait_healthy(handle.url, 60)
    except BaseException:
        handle.shutdown()
        raise
    handle.start_s = time.monotonic() - started
    return handle


def fleet_summary(handle: FleetHandle) -> dict[str, Any]:
    return {"url": handle.url, "deployments": handle.deployed, "start_s": round(handle.start_s, 1)}


def serve_until_signalled(manifest_path: Path, *, store_url: str, spans_dir: Path,
                          otlp_endpoint: str | None, collector: dict[str, Any] | None,
                          port: int, ray_address: str | None, reload_interval_s: float,
                          echo: Any = print, host: str = "127.0.0.1",
                          require_keys: bool = False) -> None:
    """``autopilot serve``: start the fleet for the store's active policy, print the URL,
    and shut down cleanly on Ctrl-C or SIGTERM. ``collector``: the gateway's distillation
    collector config (``serving.gateway``), built by the control plane. Beyond loopback
    ``require_keys`` must be set (``check_listen``): refused before anything starts."""
    import signal
    import threading
    from datetime import datetime

    check_listen(host, require_keys)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    spans = Path(spans_dir) / f"gateway-{stamp}.jsonl"
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    echo(f"starting the fleet from {manifest_path} ...")
    try:
        handle = start_fleet(manifest_path, store_url=store_url, http_port=port,
                             ray_address=ray_address, spans_path=spans,
                             reload_interval_s=reload_interval_s,
                             otlp_endpoint=otlp_endpoint, collector=collector, host=host,
                             require_keys=require_keys)
        try:
            echo(f"gateway: {handle.url}  (started in {handle.start_s:.0f}s; "
                 f"deployments: {', '.join(handle.deployed)})")
            echo(f"spans: {otlp_endpoint or spans}")
            echo("API keys: " + ("required" if require_keys else
                                 "optional (loopback; --require-keys to require them)"))
            echo("press Ctrl-C to stop")
            while not stop.wait(0.5):
                pass
            echo("stopping the fleet ...")
        finally:
            handle.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo("stopped")
