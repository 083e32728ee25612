"""The loop's flows through a Prefect work pool for real (issue 15, defect 2): a Prefect
server (the test harness: a server subprocess over HTTP with its own database), ``autopilot
schedule --work-pool`` creating the pool and deploying the three flows, ``autopilot worker``
polling it (the deployments turn Ready), and one nightly run through the pool on an empty
state directory: it completes (nothing to learn from) and its end asks for the verify run,
which the same worker runs to Completed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from controlplane.bootstrap import initialise_state
from controlplane.cli import cli
from controlplane.settings import StateDir

pytestmark = pytest.mark.integration

POOL = "autopilot-test-pool"


@pytest.fixture(scope="module")
def served_pool(tmp_path_factory):
    """A Prefect server, an initialised state directory deployed to ``POOL``, and a worker
    polling it; the worker is stopped afterwards (the server and its database go with the
    harness)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    state = StateDir(tmp_path_factory.mktemp("work-pool") / "state")
    initialise_state(state)
    with pytest.MonkeyPatch.context() as env, prefect_test_harness(server_startup_timeout=180):
        env.setenv("PREFECT_HOME", str(state.prefect_home))
        url = PREFECT_API_URL.value()
        deployed = CliRunner().invoke(cli, ["--state-dir", str(state.root), "--json",
                                            "schedule", "--work-pool", POOL])
        worker_env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_WORKER_QUERY_SECONDS": "1",
                      "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("autopilot")), "--state-dir", str(state.root),
             "worker", "--work-pool", POOL],
            env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        # Drained as it comes (a full pipe would stall the worker); the flow runs' own log
        # lines, the hook's among them, are in it.
        worker.lines = []
        reader = threading.Thread(target=lambda: worker.lines.extend(worker.stdout),
                                  daemon=True)
        reader.start()
        try:
            yield state, deployed, worker
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            reader.join(timeout=10)
            print("".join(worker.lines)[-4000:])


# Upper bounds only (a passing run never waits them out): wide, because the CI machine may
# be loaded and a Prefect server on SQLite then answers slowly.
RUN_S = 300
HOOK_S = 120


def _verify_runs_asked_by(client, verify_id, nightly_run_id) -> list:
    """The verify runs the nightly run ``nightly_run_id`` asked for (the hook keys each by
    the night it follows), so a run an earlier test asked for late is not counted here."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
        id=DeploymentFilterId(any_=[verify_id])))
    return [r for r in runs if r.idempotency_key == f"verify-after-{nightly_run_id}"]


def _hook_lines(worker, flow_run_name: str) -> list[str]:
    """What the nightly's end-of-run hook logged for the run named ``flow_run_name``."""
    mark = f"Flow run '{flow_run_name}' - "
    return [line for line in list(worker.lines) if mark in line and "verify run" in line]


def _wait_for(read, ok, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = read()
        if ok(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: still {value!r} after {timeout_s} s")


def test_schedule_creates_the_pool_and_deploys_the_three_flows(served_pool):
    import json

    from prefect import get_client

    state, deployed, _worker = served_pool
    assert deployed.exit_code == 0, deployed.output
    result = json.loads(deployed.output)
    assert result["pool"] == "create"
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
        assert pool.type == "process"
        nightly = client.read_deployment_by_name("autopilot-nightly/autopilot-nightly")
        verify = client.read_deployment_by_name("autopilot-verify/autopilot-verify")
        quarterly = client.read_deployment_by_name(
            "autopilot-quarterly-report/autopilot-quarterly-report")
    for d in (nightly, verify, quarterly):
        assert d.work_pool_name == POOL
        assert d.entrypoint.startswith("controlplane.flows."), d.entrypoint
        assert d.parameters == {"state_dir": str(state.root)}
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert verify.schedules == []
    # Deploying again reuses the pool and changes nothing else about it.
    again = CliRunner().invoke(
        cli, ["--state-dir", str(state.root), "--json", "schedule", "--work-pool", POOL])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["pool"] == "use"


def test_a_nightly_through_the_pool_completes_and_its_end_runs_verify(served_pool):
    from prefect import get_client
    from prefect.client.schemas.objects import DeploymentStatus
    from prefect.deployments import run_deployment

    _state, _deployed, worker = served_pool
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("autopilot-nightly/autopilot-nightly")
        verify = client.read_deployment_by_name("autopilot-verify/autopilot-verify")
        _wait_for(lambda: client.read_deployment(nightly.id).status,
                  lambda s: s == DeploymentStatus.READY, 60, "nightly deployment status")
        run = run_deployment(nightly.id, timeout=0, as_subflow=False)
        final = _wait_for(lambda: client.read_flow_run(run.id).state,
                          lambda s: s is not None and s.is_final(), RUN_S, "nightly run")
        assert final.is_completed(), (final, worker.poll())
        verify_runs = _wait_for(
            lambda: _verify_runs_asked_by(client, verify.id, run.id),
            lambda runs: bool(runs), HOOK_S, "verify runs asked for")
        assert len(verify_runs) == 1
        done = _wait_for(lambda: client.read_flow_run(verify_runs[0].id).state,
                         lambda s: s is not None and s.is_final(), RUN_S, "verify run")
        assert done.is_completed(), done


def test_a_nightly_ending_just_before_the_next_one_leaves_verify_to_it(served_pool):
    from datetime import UTC, datetime, timedelta

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    _state, _deployed, worker = served_pool
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("autopilot-nightly/autopilot-nightly")
        verify = client.read_deployment_by_name("autopilot-verify/autopilot-verify")

        # What Prefect's scheduler would have queued: the next night, 20 minutes away.
        client.create_flow_run_from_deployment(
            nightly.id, state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(minutes=20)))
        run = run_deployment(nightly.id, timeout=0, as_subflow=False)
        final = _wait_for(lambda: client.read_flow_run(run.id).state,
                          lambda s: s is not None and s.is_final(), RUN_S, "nightly run")
        assert final.is_completed(), final
        # The hook runs after the state is final: wait for what it says it decided.
        name = client.read_flow_run(run.id).name
        said = _wait_for(lambda: _hook_lines(worker, name), bool, HOOK_S,
                         "the hook's decision in the worker's output")
        assert "no verify run asked for (the next nightly is due at" in said[0], said
        assert _verify_runs_asked_by(client, verify.id, run.id) == []
