"""Start and stop the serving fleet: local Ray (or a cluster), the tier deployments the
policy needs, and the gateway.

``start_fleet`` is what ``autopilot serve``, the integration tests, the gates and the
benchmarks call. It returns a ``FleetHandle`` with the gateway URL. A gateway that listens
beyond loopback must require API keys (``serving.apikeys``): ``start_fleet`` refuses to
start one that would not (``check_listen``), before Ray starts.

On a shared Ray cluster (``ray_address``) the fleet is a tenant: Serve's HTTP options are
cluster-wide and fixed once Serve runs, so when it already runs the gateway takes its
proxy's port (or the start is refused, naming both ports, when another port was asked
for); applications of a name the fleet needs that belong to someone else are refused, not
replaced (``serving.tiers.refuse_foreign``); and ``FleetHandle.shutdown`` deletes only the
fleet's own applications. Serve and Ray themselves are shut down only when the handle
started that Ray. ``serve_until_signalled`` stops cleanly on SIGINT/SIGTERM, during start-up
too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Self

from contracts.errors import PermanentError, TransientError
from policies.policy import Policy
from serving.engine import EngineOptions

__all__ = ["DEFAULT_HTTP_PORT", "FleetHandle", "FleetStartError", "check_listen", "free_port",
           "is_loopback", "running_http", "start_fleet"]

_log = logging.getLogger(__name__)


# Ray Serve's throughput mode (Ray >= 2.55): replica user code on the replica's own loop
# and gRPC between replicas, which roughly halves the gateway hop's cost on a small host.
# The router keeps its own loop so plain (non-async) callers can still use handles.
# Its direct ingress drains the gateway's replica for at least 30 s when it stops (time for
# a load balancer to notice); nothing balances onto a local Ray, and a stop that slow
# outlasts a typical SIGTERM grace period (then SIGKILL leaves Ray's processes behind).
SERVE_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
                        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


#: The gateway's port when the caller names none and this start brings Serve up.
DEFAULT_HTTP_PORT = 8000
GATEWAY_ROUTE = "/"  # the gateway's route prefix on Serve's proxy
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


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
    """A started fleet. ``owner``: the marker its applications carry (``fleet_owner``);
    ``started_ray``: this handle started (and so owns) the local Ray; ``joined_ray``: it
    connected this process to a cluster (disconnected again at shutdown, the cluster runs
    on); ``claimed``: application names it deployed or began to deploy."""

    url: str
    manifest_path: Path
    store_url: str
    engine_options: EngineOptions
    started_ray: bool
    start_s: float
    deployed: list[str] = field(default_factory=list)
    owner: str = ""
    joined_ray: bool = False
    claimed: list[str] = field(default_factory=list)
    _closed: bool = False

    def ensure_variants(self, policy: Policy) -> list[str]:
        """Deploy every tier deployment ``policy`` needs that is not running yet (gates call
        it for a candidate before sending its traffic). Returns the applications started.
        Raises ``ApplicationNotOurs`` when another owner holds one of their names."""
        from contracts.manifest import load_fleet
        from serving.tiers import cluster_apps, deploy_tiers, refuse_foreign, required_deployments

        fleet = load_fleet(self.manifest_path)
        needed = required_deployments(policy, fleet)
        apps = cluster_apps()
        refuse_foreign(apps, [k.app_name for k in needed], self.owner)
        missing = [k for k in needed
                   if k.app_name not in apps or apps[k.app_name].status != "RUNNING"]
        if missing:
            self.claimed.extend(k.app_name for k in missing)
            deploy_tiers(self.manifest_path, missing, self.engine_options, owner=self.owner)
            self.deployed.extend(k.app_name for k in missing)
        return [k.app_name for k in missing]

    def own_apps(self) -> list[str]:
        """The applications on the cluster that are this fleet's: those carrying its owner
        marker (the gateway's reloads deploy tiers too) and those it claimed, gateway first."""
        from serving.gateway import GATEWAY_APP
        from serving.tiers import cluster_apps

        apps = cluster_apps()
        mine = {n for n, app in apps.items() if app.owner == self.owner}
        # a claimed name exists only because this handle deployed it (foreign ones are
        # refused before deploying), even if Serve does not list its marker yet
        mine.update(n for n in self.claimed if n in apps)
        return sorted(mine, key=lambda n: (n != GATEWAY_APP, n))

    def shutdown(self) -> None:
        """If this handle started Ray (no other tenant on it), stop Serve and that Ray.
        Otherwise delete the fleet's own applications (gateway and tiers, ``own_apps``),
        never another's, and leave Serve running; if it joined the cluster, disconnect."""
        if self._closed:
            return
        self._closed = True
        import ray

        if not ray.is_initialized():
            return
        if self.started_ray:
            from ray import serve

            try:
                serve.shutdown()  # replicas stop gracefully: vLLM engines end their processes
            finally:
                ray.shutdown()
            return
        try:
            self._delete_own_apps()
            self._stop_shared_state()
        finally:
            if self.joined_ray:
                ray.shutdown()  # a driver's disconnect: the cluster's processes keep running

    def _stop_shared_state(self) -> None:
        """The gateway's ledger actor is detached (a redeployed gateway finds it): on a
        cluster the fleet does not own, leaving it would leave a process of ours behind."""
        from contracts.manifest import load_fleet
        from serving.shared_state import stop_shared_state

        try:
            name = load_fleet(self.manifest_path).metadata.name
            if stop_shared_state(self.store_url, name):
                _log.info("ended the gateway's shared-state actor (its spend is in the store)")
        except Exception as exc:  # noqa: BLE001 - shutdown goes on; the actor is idle
            _log.warning("could not end the gateway's shared-state actor: %s", exc)

    def _delete_own_apps(self) -> None:
        from serving.tiers import serve_client

        if serve_client() is None:
            return
        names = self.own_apps()
        if not names:
            return
        _log.info("deleting the fleet's applications: %s", ", ".join(names))
        # one request for all, so the replicas (vLLM engines) stop side by side
        serve_client().delete_apps(names, blocking=True)

    def __enter__(self) -> Self:
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


def running_http() -> tuple[str, int, str] | None:
    """``(host, port, proxy location)`` of the Serve already running on the connected
    cluster, or None when Serve does not run there."""
    from serving.tiers import serve_client

    client = serve_client()
    if client is None:
        return None
    config = client.http_config
    location = client.get_serve_details().get("proxy_location")
    return str(config.host or ""), int(config.port), str(getattr(location, "value", location))


def _join_running_serve(running: tuple[str, int, str], http_port: int | None, host: str,
                        require_keys: bool) -> tuple[str, int]:
    """The (URL host, port) of a Serve that already runs, or ``FleetStartError`` when it
    cannot honour what the caller asked: Serve ignores new HTTP options once it runs, so
    the gateway would answer on another port than the one waited on."""
    run_host, run_port, location = running
    if location.lower() in ("disabled", "noserver"):
        raise FleetStartError(
            "Ray Serve already runs on this cluster with its HTTP proxies disabled "
            f"(proxy_location={location}): the gateway would not be reachable over HTTP")
    if http_port and http_port != run_port:
        raise FleetStartError(
            f"Ray Serve already runs on this cluster with its HTTP proxy on port {run_port}; "
            f"the gateway cannot listen on port {http_port} (Serve's HTTP options are "
            "cluster-wide and fixed once it starts). Leave the port out (or pass "
            f"--port {run_port}) to serve on {run_port}, or use another cluster")
    if not is_loopback(host) and host != run_host:
        raise FleetStartError(
            f"Ray Serve already runs on this cluster with its HTTP proxy on {run_host!r}; "
            f"the gateway cannot listen on {host!r} (Serve's HTTP options are fixed once "
            "it starts)")
    try:  # the proxy's host decides who can reach the gateway, not the one asked for
        check_listen(run_host or "0.0.0.0", require_keys)
    except FleetStartError as exc:
        raise FleetStartError(f"Ray Serve already runs on this cluster: {exc}") from None
    url_host = "127.0.0.1" if run_host in _WILDCARD_HOSTS else run_host
    return url_host, run_port


def _refuse_taken(apps: dict[str, Any], names: list[str], owner: str) -> None:
    """Refuse names held by another owner, and the gateway's route held by another app."""
    from serving.tiers import ApplicationNotOurs, refuse_foreign

    try:
        refuse_foreign(apps, names, owner)
    except ApplicationNotOurs as exc:
        raise FleetStartError(str(exc)) from exc
    taken = [a.name for a in apps.values()
             if a.route_prefix == GATEWAY_ROUTE and a.owner != owner and a.name not in names]
    if taken:
        raise FleetStartError(
            f"the route {GATEWAY_ROUTE!r} the gateway needs is already served by "
            f"application(s) {', '.join(map(repr, taken))} on this cluster, which this fleet "
            f"({owner!r}) did not deploy; refusing to take it over")



def start_fleet(manifest_path: str | Path, *, store_url: str, policy_version: int | None = None,
                http_port: int | None = 0, ray_address: str | None = None,
                spans_path: str | Path | None = None, reload_interval_s: float = 2.0,
                engine_options: EngineOptions | None = None, otlp_endpoint: str | None = None,
                num_cpus: int | None = 2, host: str = "127.0.0.1", seed: int = 0,
                throughput_optimized: bool = True,
                collector: dict[str, Any] | None = None,
                require_keys: bool = False, gateway_replicas: int | None = None) -> FleetHandle:
    """Start the fleet for the active policy (or ``policy_version``) and return its handle.

    Starts local Ray (``address="local"``) unless ``ray_address`` is given (or this process
    is connected already). ``http_port``: when this call brings Serve up, ``0`` picks a free
    port and ``None`` takes ``DEFAULT_HTTP_PORT``; when Serve already runs on the cluster,
    both take its proxy's port, and any other port is refused (``FleetStartError`` naming
    both). Applications of the fleet's names that another owner deployed are refused too.
    Spans go to ``otlp_endpoint`` (or the OTEL_EXPORTER_OTLP_* variables) and otherwise to
    ``spans_path`` as JSON lines. ``throughput_optimized`` turns on Ray Serve's throughput
    mode for a local Ray this call starts (a cluster keeps its own). ``require_keys``: every
    call needs a valid API key (required beyond loopback). ``gateway_replicas``: the
    gateway's replica count (None: ``$AUTOPILOT_GATEWAY_REPLICAS``, else 1); every replica
    shares one ledger, route table and response cache (``serving.shared_state``).
    """
    check_listen(host, require_keys)
    import ray

    if throughput_optimized and ray_address is None and not ray.is_initialized():
        for name, value in SERVE_THROUGHPUT_ENV.items():
            os.environ.setdefault(name, value)  # read by the Serve actors Ray starts
    from ray import serve

    from contracts.manifest import load_fleet
    from serving.tiers import (
        ApplicationNotOurs,
        TierStartFailed,
        cluster_apps,
        deploy_tiers,
        fleet_owner,
        required_deployments,
    )
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

    handle: FleetHandle | None = None
    try:
        # Not interrupted by us: once the handle exists, its shutdown stops what started.
        with _while_ray_starts():
            started_ray = joined_ray = False
            if not ray.is_initialized():
                if ray_address:
                    ray.init(address=ray_address)
                    joined_ray = True
                else:
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                             log_to_driver=True)
                    started_ray = True
            handle = FleetHandle(url="", manifest_path=manifest_path, store_url=store_url,
                                 engine_options=engine_options, started_ray=started_ray,
                                 start_s=0.0, owner=fleet_owner(store_url),
                                 joined_ray=joined_ray)
        running = running_http()
        if running is None:
            port = http_port if http_port is not None else DEFAULT_HTTP_PORT
            port = port or free_port()
            serve.start(http_options={"host": host, "port": port})
            url_host = host
        else:
            url_host, port = _join_running_serve(running, http_port, host, require_keys)
            _log.info("Ray Serve already runs on this cluster: the gateway takes its "
                      "proxy's port %d", port)
        handle.url = f"http://{url_host}:{port}"
        from serving.gateway import GATEWAY_APP, gateway_application

        names = [GATEWAY_APP, *(k.app_name for k in keys)]
        _refuse_taken(cluster_apps(), names, handle.owner)
        handle.claimed.extend(names)
        _log.info("starting %d tier deployment(s): %s", len(keys),
                  ", ".join(k.app_name for k in keys))
        try:
            deploy_tiers(manifest_path, keys, engine_options, owner=handle.owner)
        except (TierStartFailed, ApplicationNotOurs) as exc:
            raise FleetStartError(str(exc)) from exc
        handle.deployed.extend(k.app_name for k in keys)
        serve.run(gateway_application(manifest_path, store_url, engine_options=engine_options,
                                      spans_path=spans_path, otlp_endpoint=otlp_endpoint,
                                      reload_interval_s=reload_interval_s,
                                      policy_version=policy_version, seed=seed,
                                      collector=collector, require_keys=require_keys,
                                      owner=handle.owner, num_replicas=gateway_replicas),
                  name=GATEWAY_APP, route_prefix=GATEWAY_ROUTE)
        _wait_healthy(handle.url, 60)
    except BaseException:
        if handle is not None:
            handle.shutdown()
        raise
    handle.start_s = time.monotonic() - started
    return handle


def fleet_summary(handle: FleetHandle) -> dict[str, Any]:
    return {"url": handle.url, "deployments": handle.deployed, "start_s": round(handle.start_s, 1)}


class _StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while the fleet was starting: unwinds the start (whose
    clean-up stops what it started). A KeyboardInterrupt, so no ``except Exception`` on the
    way (Ray's, ours) swallows it."""


class _StopSignals:
    """SIGINT/SIGTERM for ``autopilot serve``. While ``interrupting`` (start-up), the first
    signal raises ``_StopRequested`` in the main thread, or, inside ``_while_ray_starts``,
    as soon as that block ends; otherwise (serving, shutting down) it only sets ``stop``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.interrupting = False
        self.deferred = 0
        self._pending = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install (again: ``ray.init`` replaces them) the handlers; ``restore`` puts back
        those found the first time."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stop.set()
        if not self.interrupting:
            return
        if self.deferred:
            self._pending = True
            return
        self.interrupting = False  # once: a second signal must not cut the clean-up short
        raise _StopRequested(signal.Signals(signum).name)

    def raise_pending(self) -> None:
        if self._pending and self.interrupting and not self.deferred:
            self._pending = False
            self.interrupting = False
            raise _StopRequested("signal during an uninterruptible step")


_ACTIVE_SIGNALS: _StopSignals | None = None


@contextmanager
def _while_ray_starts() -> Iterator[None]:
    """Around ``ray.init`` in ``serve_until_signalled`` (a no-op elsewhere).

    ``ray.init`` replaces the process's SIGTERM handler with its own (exit, after its node
    killed the processes it started) and its core worker then installs a C-level crash
    handler that aborts on SIGTERM. So a signal amid ``ray.init`` is Ray's to handle (its
    exit is turned into a stop here), ours are taken back as soon as it returns, and a
    signal held meanwhile interrupts then."""
    signals = _ACTIVE_SIGNALS
    if signals is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signals.deferred += 1
    try:
        yield
    except SystemExit as exc:  # Ray's SIGTERM handler, amid ray.init
        import ray

        signals.stop.set()
        signals.interrupting = False
        if ray.is_initialized():
            ray.shutdown()
        raise _StopRequested("SIGTERM while Ray started") from exc
    finally:
        signals.deferred -= 1
        signals.install()
    signals.raise_pending()


def serve_until_signalled(manifest_path: Path, *, store_url: str, spans_dir: Path,
                          otlp_endpoint: str | None, collector: dict[str, Any] | None,
                          port: int | None, ray_address: str | None, reload_interval_s: float,
                          echo: Any = print, host: str = "127.0.0.1",
                          require_keys: bool = False,
                          gateway_replicas: int | None = None) -> None:
    """``autopilot serve``: start the fleet for the store's active policy, print the URL,
    and shut down cleanly on SIGINT or SIGTERM, also while it starts (the start is cut short
    and what it started is stopped: its applications deleted, a Ray it started stopped);
    returns normally after a signal. ``port``: None takes ``DEFAULT_HTTP_PORT``, or the
    port of a Serve already running on the cluster (``start_fleet``). ``collector``: the
    gateway's distillation collector config (``serving.gateway``), built by the control
    plane. Beyond loopback ``require_keys`` must be set (``check_listen``): refused before
    anything starts."""
    global _ACTIVE_SIGNALS
    from datetime import datetime

    check_listen(host, require_keys)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    spans = Path(spans_dir) / f"gateway-{stamp}.jsonl"
    signals = _StopSignals()
    signals.install()
    _ACTIVE_SIGNALS = signals
    echo(f"starting the fleet from {manifest_path} ...")
    try:
        signals.interrupting = True
        try:
            handle = start_fleet(manifest_path, store_url=store_url, http_port=port,
                                 ray_address=ray_address, spans_path=spans,
                                 reload_interval_s=reload_interval_s,
                                 otlp_endpoint=otlp_endpoint, collector=collector, host=host,
                                 require_keys=require_keys, gateway_replicas=gateway_replicas)
        except _StopRequested:
            echo("stopped while starting; what had started is shut down")
            return
        except Exception as exc:
            if not signals.stop.is_set():
                raise
            # Ray may wrap the interruption in its own error; the start was stopped
            _log.info("start-up ended by a stop signal: %s", exc)
            echo("stopped while starting; what had started is shut down")
            return
        finally:
            signals.interrupting = False
        try:
            echo(f"gateway: {handle.url}  (started in {handle.start_s:.0f}s; "
                 f"deployments: {', '.join(handle.deployed)})")
            echo(f"spans: {otlp_endpoint or spans}")
            echo("API keys: " + ("required" if require_keys else
                                 "optional (loopback; --require-keys to require them)"))
            echo("press Ctrl-C to stop")
            while not signals.stop.wait(0.5):
                pass
            echo("stopping the fleet ...")
        finally:
            handle.shutdown()
    finally:
        _ACTIVE_SIGNALS = None
        signals.restore()
    echo("stopped")
