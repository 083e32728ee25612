"""The fleet as a tenant of a shared Ray cluster, and ``autopilot serve`` stopped by SIGTERM
(issue 15, defect 6).

One module fixture starts "the cluster" in a subprocess (``ray.init`` with its own temp
dir, Serve on a port of its own, and another team's application at ``/team-b``); the fleet
joins it by ``ray_address``. The tiers are a stub replica swapped in for
``serving.tiers.TierReplica`` (``STUB_TIER_SOURCE``, defined outside any importable module
so Ray pickles it by value): no vLLM, so the module stays well under 90 s. The gateway is
the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEAM_APP, TEAM_ROUTE, TEAM_ANSWER = "team-b-search", "/team-b", "team-b ok"
# Both sides of a joined cluster must agree on Ray's auth mode (docs: ENVIRONMENT.md).
RAY_ENV = {"RAY_AUTH_MODE": "token"}

STUB_TIER_SOURCE = '''
import serving.tiers


class StubTierReplica:
    """Stands in for TierReplica: answers at once, loads no model."""

    def __init__(self, manifest_path, tier, variant, prefix_caching, options):
        self.tier, self.variant = tier, variant

    def reconfigure(self, config):
        self.config = config

    async def generate(self, request):
        return {"text": " stub-" + self.tier, "input_tokens": len(request["prompt"]),
                "output_tokens": 2, "cached_input_tokens": 0, "finish_reason": "stop"}

    async def info(self):
        return {"tier": self.tier, "variant": self.variant, "prefix_caching": False,
                "weights_digest": "stub", "adapters": {}, "start_s": 0.0}


serving.tiers.TierReplica = StubTierReplica
'''

CLUSTER_SOURCE = f'''
import sys

import ray
from ray import serve

ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1])
serve.start(http_options={{"host": "127.0.0.1", "port": int(sys.argv[2])}})


@serve.deployment(ray_actor_options={{"num_cpus": 0}})
class TeamApp:
    def __call__(self, request):
        return "{TEAM_ANSWER}"


serve.run(TeamApp.bind(), name="{TEAM_APP}", route_prefix="{TEAM_ROUTE}")
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes it
serve.shutdown()
ray.shutdown()
'''


def _free_port() -> int:
    from serving.fleet import free_port

    return free_port()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.status, json.loads(reply.read())


def _policy_doc() -> dict:
    return {"apiVersion": "autopilot/v1", "kind": "Policy",
            "metadata": {"version": 1, "author": "test", "created": "2026-01-01T00:00:00Z"},
            "spec": {"routing": {"router": "fixed", "escalation": ["S"], "max_attempts": 2}}}


class _Lines:
    """A subprocess's stdout, line by line, read on a thread (a pipe's buffered reader and
    ``select`` disagree about what is left to read)."""

    def __init__(self, proc: subprocess.Popen):
        import queue
        import threading

        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, marker: str, timeout_s: float) -> str:
        """The first line (from here on) containing ``marker``."""
        import queue

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                return line
        raise AssertionError(f"no {marker!r} within {timeout_s}s; output: {self.seen}")

    def rest(self) -> list[str]:
        """Every line, once the process has closed its output."""
        self._thread.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return self.seen


@pytest.fixture(scope="module")
def cluster():
    """Another team's Ray cluster: Serve on its own port, its app at ``/team-b``."""
    temp = Path(tempfile.mkdtemp(prefix="ray-shared-"))  # short: Ray's socket paths
    port = _free_port()
    env = {**os.environ, **RAY_ENV}
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER_SOURCE, str(temp), str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    try:
        address = _Lines(proc).until("GCS", 120).split()[-1]
        yield {"address": address, "port": port, "url": f"http://127.0.0.1:{port}"}
    finally:
        proc.stdin.close()  # the cluster's own driver stops Serve and its Ray
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def stub_fleet(tmp_path_factory):
    """A one-tier stub fleet, its store with the active policy, and the stub tiers."""
    import yaml

    from policies.policy import Policy
    from serving.testing import make_stub_fleet
    from store import Store

    root = tmp_path_factory.mktemp("shared")
    manifest = make_stub_fleet(root / "fleet", tiers=("S",), variants=("bf16",))
    (root / "policy.yaml").write_text(yaml.safe_dump(_policy_doc()))
    store_url = f"sqlite:///{root / 'autopilot.db'}"
    with Store.open(store_url) as store:
        store.put_policy(Policy.model_validate(_policy_doc()))
        store.activate(1, actor="test", reason="shared-cluster test")
    with pytest.MonkeyPatch.context() as patch:
        namespace: dict = {"__name__": "stub_tiers_by_value"}  # not importable: by value
        import serving.tiers

        original = serving.tiers.TierReplica
        patch.setattr(serving.tiers, "TierReplica", original)  # undone to the original
        exec(STUB_TIER_SOURCE, namespace)  # noqa: S102 - the test's own source; swaps it
        assert serving.tiers.TierReplica is namespace["StubTierReplica"]
        for name, value in RAY_ENV.items():
            patch.setenv(name, value)
        yield {"root": root, "manifest": manifest, "store_url": store_url}
    assert serving.tiers.TierReplica is original


def _cluster_apps(address: str) -> dict:
    """The cluster's applications, read from this process (connecting if need be)."""
    import ray

    from serving.tiers import cluster_apps

    if not ray.is_initialized():
        ray.init(address=address)
    return cluster_apps()


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_ownership_and_port_rules_without_a_cluster():
    from serving.fleet import FleetStartError, _join_running_serve, _refuse_taken
    from serving.tiers import ApplicationNotOurs, ServeApp, fleet_owner, refuse_foreign

    ours = fleet_owner("sqlite:///a.db")
    assert ours != fleet_owner("sqlite:///b.db") and ours.startswith("fleet-autopilot/")
    apps = {"gateway": ServeApp("gateway", "RUNNING", "/", None),
            "tier-S-bf16-nopc": ServeApp("tier-S-bf16-nopc", "RUNNING", None, ours),
            "x": ServeApp("x", "RUNNING", "/", fleet_owner("sqlite:///b.db"))}
    refuse_foreign(apps, ["tier-S-bf16-nopc", "absent"], ours)
    with pytest.raises(ApplicationNotOurs, match="'gateway'"):
        refuse_foreign(apps, ["gateway", "tier-S-bf16-nopc"], ours)
    with pytest.raises(FleetStartError, match="route '/'.*'x'"):
        _refuse_taken({"x": apps["x"]}, ["gateway"], ours)

    assert _join_running_serve(("0.0.0.0", 8123, "EveryNode"), 0, "127.0.0.1", True) == (
        "127.0.0.1", 8123)
    assert _join_running_serve(("127.0.0.1", 8123, "HeadOnly"), None, "127.0.0.1", False) == (
        "127.0.0.1", 8123)
    with pytest.raises(FleetStartError, match="port 8123.*port 9000"):
        _join_running_serve(("127.0.0.1", 8123, "EveryNode"), 9000, "127.0.0.1", False)
    with pytest.raises(FleetStartError, match="beyond loopback"):
        _join_running_serve(("0.0.0.0", 8123, "EveryNode"), 0, "127.0.0.1", False)
    with pytest.raises(FleetStartError, match="disabled"):
        _join_running_serve(("127.0.0.1", 8123, "Disabled"), 0, "127.0.0.1", False)


def test_another_port_is_refused_naming_both_and_nothing_is_deployed(cluster, stub_fleet):
    import ray

    from serving.fleet import FleetStartError, start_fleet

    other = _free_port()
    with pytest.raises(FleetStartError) as err:
        start_fleet(stub_fleet["manifest"], store_url=stub_fleet["store_url"],
                    ray_address=cluster["address"], http_port=other)
    assert str(cluster["port"]) in str(err.value) and str(other) in str(err.value)
    assert not ray.is_initialized()  # the joined driver disconnected again
    try:
        assert set(_cluster_apps(cluster["address"])) == {TEAM_APP}
    finally:
        _disconnect()
    assert _get(cluster["url"] + TEAM_ROUTE) == (200, TEAM_ANSWER)


def test_an_application_of_our_name_that_is_not_ours_is_refused_not_replaced(cluster,
                                                                               stub_fleet):
    import ray
    from ray import serve

    from serving.fleet import FleetStartError, start_fleet
    from serving.gateway import GATEWAY_APP

    def impostor():
        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class OtherGateway:
            def __call__(self, request):
                return "team-c gateway"

        return OtherGateway.bind()

    ray.init(address=cluster["address"])
    try:
        serve.run(impostor(), name=GATEWAY_APP, route_prefix="/team-c")
        with pytest.raises(FleetStartError, match=f"'{GATEWAY_APP}'.*not deployed by"):
            start_fleet(stub_fleet["manifest"], store_url=stub_fleet["store_url"],
                        ray_address=cluster["address"])
        assert set(_cluster_apps(cluster["address"])) == {TEAM_APP, GATEWAY_APP}
        assert _get(cluster["url"] + "/team-c") == (200, "team-c gateway")
        serve.delete(GATEWAY_APP)
    finally:
        _disconnect()


def test_the_fleet_joins_on_the_running_port_and_deletes_only_its_own_apps(cluster,
                                                                            stub_fleet):
    import ray

    from serving.fleet import start_fleet
    from serving.tiers import cluster_apps, fleet_owner

    handle = start_fleet(stub_fleet["manifest"], store_url=stub_fleet["store_url"],
                         ray_address=cluster["address"], http_port=0,
                         spans_path=stub_fleet["root"] / "spans.jsonl")
    try:
        assert handle.url == cluster["url"] and handle.joined_ray and not handle.started_ray
        status, body = _post(handle.url + "/v1/completions", {
            "prompt": "hi", "max_tokens": 4, "autopilot": {"task_id": "shared-1"}})
        assert status == 200 and body["choices"][0]["text"] == " stub-S"
        owners = {n: a.owner for n, a in cluster_apps().items()}
        assert owners == {TEAM_APP: None, "gateway": fleet_owner(stub_fleet["store_url"]),
                          "tier-S-bf16-nopc": fleet_owner(stub_fleet["store_url"])}
    finally:
        handle.shutdown()
    assert not ray.is_initialized()
    try:
        assert set(_cluster_apps(cluster["address"])) == {TEAM_APP}  # Serve still runs
        # The gateway's detached ledger actor is the fleet's too: it leaves with the fleet.
        from contracts.manifest import load_fleet
        from serving.shared_state import STATE_NAMESPACE, state_actor_name

        name = state_actor_name(stub_fleet["store_url"],
                                load_fleet(stub_fleet["manifest"]).metadata.name)
        with pytest.raises(ValueError):
            ray.get_actor(name, namespace=STATE_NAMESPACE)
    finally:
        _disconnect()
    assert _get(cluster["url"] + TEAM_ROUTE) == (200, TEAM_ANSWER)


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("when", ["serving", "starting"])
def test_sigterm_stops_autopilot_serve_cleanly(stub_fleet, tmp_path, when):
    """``autopilot serve`` on its own local Ray: SIGTERM while it serves, or while it
    starts, exits 0 and leaves none of the processes it started (checked by PID)."""
    import psutil
    from click.testing import CliRunner

    from controlplane.cli import cli

    state = tmp_path / "state"
    init = CliRunner().invoke(cli, ["--state-dir", str(state), "init", "--fleet",
                                    str(stub_fleet["manifest"]), "--policy",
                                    str(stub_fleet["root"] / "policy.yaml")])
    assert init.exit_code == 0, init.output
    runner = STUB_TIER_SOURCE + "\nfrom controlplane.cli.root import main\nmain()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", runner, "--state-dir", str(state), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")})
    lines = _Lines(proc)
    started: dict[int, psutil.Process] = {}
    try:
        log = Path(lines.until("engine logs:", 60).split()[2])
        lines.until("starting the fleet", 60)
        if when == "serving":
            lines.until("press Ctrl-C", 90)
        else:  # Ray runs, the tier is being deployed, the gateway is not
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and "serving.tiers: deploying" not in (
                    log.read_text() if log.exists() else ""):
                time.sleep(0.1)
        started.update((p.pid, p) for p in _descendants(proc.pid))
        assert started, "the serve process started no Ray processes"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        output = lines.rest()
        assert proc.returncode == 0, "\n".join(output)
        assert output[-1].startswith("stopped"), output
        assert ("stopping the fleet ..." in output) == (when == "serving"), output
        _gone, alive = psutil.wait_procs(list(started.values()), timeout=20)
        assert not alive, [(p.pid, _cmdline(p)[:120]) for p in _alive(alive)]
    finally:
        if proc.poll() is None:
            started.update((p.pid, p) for p in _descendants(proc.pid))
            proc.kill()
            proc.wait()
        for p in _alive(started.values()):  # only what this test's subprocess started
            p.kill()


def _cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _alive(processes) -> list:
    import psutil

    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive
