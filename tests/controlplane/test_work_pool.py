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
        try:
            yield state, deployed, worker
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                output, _ = worker.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                output, _ = worker.communicate()
            print(output[-4000:])


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
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
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
                          lambda s: s is not None and s.is_final(), 120, "nightly run")
        assert final.is_completed(), (final, worker.poll())
        verify_runs = _wait_for(
            lambda: client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[verify.id]))),
            lambda runs: bool(runs), 30, "verify runs asked for")
        assert len(verify_runs) == 1
        done = _wait_for(lambda: client.read_flow_run(verify_runs[0].id).state,
                         lambda s: s is not None and s.is_final(), 120, "verify run")
        assert done.is_completed(), done


def test_a_nightly_ending_just_before_the_next_one_leaves_verify_to_it(served_pool):
    from datetime import UTC, datetime, timedelta

    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("autopilot-nightly/autopilot-nightly")
        verify = client.read_deployment_by_name("autopilot-verify/autopilot-verify")

        def verify_runs():
            return client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[verify.id])))

        before = len(verify_runs())
        # What Prefect's scheduler would have queued: the next night, 20 minutes away.
        client.create_flow_run_from_deployment(
            nightly.id, state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(minutes=20)))
        run = run_deployment(nightly.id, timeout=0, as_subflow=False)
        final = _wait_for(lambda: client.read_flow_run(run.id).state,
                          lambda s: s is not None and s.is_final(), 120, "nightly run")
        assert final.is_completed(), final
        time.sleep(2)  # a verify run asked for would be recorded before the state settles
        assert len(verify_runs()) == before
