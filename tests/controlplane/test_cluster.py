"""The scale-out setup for real, on one machine (issue 15): ``scripts/cluster_up.sh`` brings
up PostgreSQL (the OS build) holding the store, a Prefect server with a process worker on a
work pool, a Ray cluster of a head and a second node, and the gateway with 2 replicas joined
to it by ``autopilot serve --ray-address``; tasks are driven through the gateway; the nightly
deployment runs on the pool to a proposal that pauses for approval, an owner approves it
through the Prefect API, and the canary starts in the PostgreSQL store and the gateway
follows it; last, ``serve run`` of the config ``autopilot serve --emit-config`` writes
brings the fleet back on the same cluster. ``cluster_up.sh down`` then leaves no process
it started.

What is stubbed: the tiers are engine-less (``serving.stub_tiers``: no vLLM engine starts,
which on 2 cores would take minutes per tier), and the nightly resumes a proposal seeded as
gated with PASSED evidence (as ``test_approval_pause.py`` does) instead of learning and
gating one from tonight's traffic: the gates and the search are tested elsewhere, and on
stub answers they would only measure the stub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contracts.prediction import Prediction
from controlplane.flows import record_proposal
from controlplane.loop.context import LoopContext
from controlplane.loop.waiting import WAITING_ACTION
from controlplane.settings import StateDir
from serving.testing import make_stub_fleet
from store import ProposalState, Store

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster_up.sh"
WINDOW = "2026-11-20"


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z":
            left.add(pid)
    return left


def _tree(roots: set[int]) -> set[int]:
    """``roots`` and every process below them, now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster of ``cluster_up.sh up`` with stub tiers; its environment as a dict, and
    the processes it started (read before ``down``)."""
    missing = [b for b in ("initdb", "pg_ctl") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"PostgreSQL's server binaries are not on this machine ({missing})")
    root = tmp_path_factory.mktemp("cluster")
    state = root / "state"
    env = {**os.environ, "AUTOPILOT_CLUSTER_STUB_TIERS": "1",
           "AUTOPILOT_CLUSTER_FLEET": str(make_stub_fleet(root / "fleet")),
           "AUTOPILOT_CLUSTER_SERVE_TIMEOUT": "180"}
    for name in ("AUTOPILOT_STORE_URL", "PREFECT_API_URL", "RAY_ADDRESS", "AUTOPILOT_HOME"):
        env.pop(name, None)
    started: set[int] = set()
    try:
        up = subprocess.run(["bash", str(SCRIPT), "up", str(state)], check=False, env=env,
                            text=True, capture_output=True, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        values = _env_file(state / "cluster.env")
        assert (state / "pids" / "ray").read_text().split(), "no Ray process was recorded"
        yield values, state, started
    finally:
        pids = {int(entry.split(":")[0]) for f in (state / "pids").glob("[!.]*")
                for entry in f.read_text().split()}
        started |= _tree(pids)
        down = subprocess.run(["bash", str(SCRIPT), "down", str(state)], check=False, env=env,
                              text=True, capture_output=True, timeout=300)
        print(down.stdout[-2000:], down.stderr[-2000:])
        assert down.returncode == 0, down.stdout + down.stderr
        assert not _alive(started), f"still running: {_alive(started)}"


def test_up_brings_two_ray_nodes_postgres_and_a_two_replica_gateway(cluster):
    values, _state, _ = cluster
    assert values["AUTOPILOT_STORE_URL"].startswith("postgresql+psycopg://")
    probe = ("import json, ray, sys; from ray import serve; "
             "ray.init(address=sys.argv[1], log_to_driver=False); "
             "gw = serve.status().applications['gateway'].deployments['Gateway']; "
             "print(json.dumps({'nodes': sum(n['Alive'] for n in ray.nodes()), "
             "'replicas': gw.replica_states.get('RUNNING', 0)}))")
    seen = subprocess.run([sys.executable, "-c", probe, values["RAY_ADDRESS"]], check=False,
                          text=True, capture_output=True, timeout=120, env={**os.environ, **values})
    assert seen.returncode == 0, seen.stderr[-2000:]
    assert json.loads(seen.stdout.strip().splitlines()[-1]) == {"nodes": 2, "replicas": 2}
    with httpx.Client(base_url=values["AUTOPILOT_GATEWAY_URL"], timeout=30) as client:
        reply = client.get("/autopilot/policy")
    # Serve's proxy prefers a replica on its own node, so which one answers says little
    assert reply.status_code == 200 and reply.headers["x-autopilot-replica"], reply.text
    assert reply.json()["version"] == 1


def test_tasks_driven_through_the_gateway_land_in_the_postgres_store(cluster):
    values, _state, _ = cluster
    env = {**os.environ, **values}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("autopilot")), "--state-dir",
         values["AUTOPILOT_HOME"], "--json", "drive", "--url", values["AUTOPILOT_GATEWAY_URL"],
         "--tasks", "12", "--concurrency", "4", "--day", WINDOW],
        check=False, env=env, text=True, capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["tasks"] == 12, report
    with Store.open(values["AUTOPILOT_STORE_URL"]) as store:
        ingests = store.audit_entries(action="telemetry.ingest")
    assert ingests, "the drive's spans were not ingested into the PostgreSQL store"


def test_a_nightly_on_the_pool_pauses_and_an_approval_starts_the_canary(cluster, monkeypatch):
    from uuid import UUID

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    values, _state, _ = cluster
    monkeypatch.setenv("AUTOPILOT_STORE_URL", values["AUTOPILOT_STORE_URL"])
    state = StateDir(Path(values["AUTOPILOT_HOME"]))
    state.save_settings(state.settings().model_copy(update={
        "platform_owners": ["owner"], "approval_timeout_s": 300}))
    pid = _gated_proposal(state)

    api = values["PREFECT_API_URL"]
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("autopilot-nightly/autopilot-nightly")
        assert nightly.work_pool_name == values["AUTOPILOT_WORK_POOL"]
        run = run_deployment(nightly.id, timeout=0, as_subflow=False, parameters={
            "since": WINDOW, "until": WINDOW, "gateway_url": values["AUTOPILOT_GATEWAY_URL"]})
        with Store.open(values["AUTOPILOT_STORE_URL"]) as store:
            paused = _wait_for(lambda: _paused(store, client, pid), 150, "a paused nightly")
        assert paused.id == run.id
        reply = _resume(f"{api}/flow_runs/{run.id}/resume", {
            "approve": True, "approver": "owner", "reason": "canary it"})
        assert reply.status_code in (200, 201) and reply.json()["status"] == "ACCEPT", reply.text
        final = _wait_for(lambda: _final(client, UUID(str(run.id))), 120, "the nightly's end")
        assert final.is_completed(), final

    with Store.open(values["AUTOPILOT_STORE_URL"]) as store:
        approval = store.get_approval(pid)
        assert (approval.approver, approval.decision.value) == ("owner", "approve")
        assert store.get_proposal(pid).state is ProposalState.CANARY
        rollout = store.current_rollout()
        assert rollout.proposal_id == pid and rollout.share == 0.25
    # both gateway replicas follow the canary from the store, no restart
    with httpx.Client(base_url=values["AUTOPILOT_GATEWAY_URL"], timeout=30) as client:
        def agreed_canary():
            seen = {json.dumps(client.get("/autopilot/policy").json()["canary"])
                    for _ in range(10)}
            return json.loads(seen.pop()) if len(seen) == 1 else None

        canary = _wait_for(agreed_canary, 30, "both replicas serving the canary")
    assert canary["version"] == rollout.candidate_version and canary["share"] == 0.25


def _gated_proposal(state: StateDir) -> str:
    """A high-risk routing proposal for ``WINDOW`` whose gates PASSED (what a night that
    found and gated it leaves behind), in the cluster's store."""
    from gates.evidence import SCHEMA
    from gates.suite import REFERENCE_SUITE_SHA256

    with LoopContext.open(state.root) as ctx:
        active = ctx.store.active_policy().policy
        spec = active.spec.model_dump(mode="json")
        spec["routing"]["max_attempts"] = active.spec.routing.max_attempts + 1
        candidate = active.evolve(author="autopilot-search", description="cluster test", **spec)
        pid = record_proposal.fn(ctx, _Candidate(candidate), WINDOW,
                                 Prediction(lever="routing", risk="high",
                                            cost_per_green_pr_rel_delta=-0.1))
        p = ctx.store.get_proposal(pid)
        ctx.store.record_gate(pid, "PASSED", actor="test", reason="test", evidence={
            "schema": SCHEMA, "overall": "PASSED", "dry_run": False,
            "candidate": {"content_hash": p.candidate_hash},
            "baseline": {"content_hash": p.baseline_hash},
            "suite": {"content_hash": REFERENCE_SUITE_SHA256}})
    return pid


class _Candidate:
    def __init__(self, policy, lever="routing"):
        self.policy, self.lever = policy, lever


def _paused(store, client, proposal_id):
    from uuid import UUID

    waiting = store.audit_entries(subject=proposal_id, action=WAITING_ACTION)
    if not waiting:
        return None
    run = client.read_flow_run(UUID(waiting[-1].payload["flow_run_id"]))
    return run if run.state is not None and run.state.is_paused() else None


def _resume(url: str, run_input: dict) -> httpx.Response:
    """What the UI posts when the owner submits the pause's form; a 503 (the server's
    database busy) is retried, as Prefect's own client does."""
    for _ in range(10):
        reply = httpx.post(url, timeout=60, json={"run_input": run_input})
        if reply.status_code != 503:
            break
        time.sleep(1)
    return reply


def _final(client, run_id):
    state = client.read_flow_run(run_id).state
    return state if state is not None and state.is_final() else None


def _wait_for(read, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = read()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: nothing after {timeout_s} s")


def test_the_emitted_serve_config_runs_on_the_cluster(cluster, tmp_path):
    """Last (it replaces the gateway): ``autopilot serve`` stops, and ``serve run`` of what
    ``autopilot serve --emit-config`` wrote brings the same fleet back on the cluster."""
    import signal

    values, state, _ = cluster
    env = {**os.environ, **values}
    gateway_pid = int((state / "pids" / "gateway").read_text().split(":")[0])
    os.kill(gateway_pid, signal.SIGTERM)  # deletes the fleet's applications, leaves Serve
    _wait_for(lambda: not _alive({gateway_pid}), 90, "`autopilot serve` stopping")
    url = values["AUTOPILOT_GATEWAY_URL"]
    config = tmp_path / "ray-serve.yaml"
    bindir = Path(sys.executable).parent
    emitted = subprocess.run(
        [str(bindir / "autopilot"), "--state-dir", values["AUTOPILOT_HOME"], "serve",
         "--emit-config", str(config), "--stub-tiers", "--replicas", "2",
         "--port", url.rsplit(":", 1)[1]],
        check=False, env=env, text=True, capture_output=True, timeout=60)
    assert emitted.returncode == 0, emitted.stderr
    deployed = subprocess.run([str(bindir / "serve"), "run", "--non-blocking", str(config)],
                              check=False, env=env, text=True, capture_output=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr[-3000:]

    def healthy():
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_for(healthy, 90, "the config's gateway")
    reply = httpx.post(f"{url}/v1/completions", timeout=30,
                       json={"model": "auto", "prompt": "2+1=", "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["autopilot"]["tier"] in {"S", "M", "L"}
