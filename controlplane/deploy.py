"""The deployment entry point: Prefect's own scheduler runs the loop's flows.

Three deployments: ``nightly`` on ``nightly_cron`` (``autopilot.yaml``, default 02:00),
``quarterly_report`` at 06:00 on the first day of each quarter, and ``verify``, which has no
clock of its own: each nightly run that ends (completed or failed, not cancelled) asks for
one verify run once it has ended (``verify_start_after_nightly``), so the two never run
at the same time, whatever the nightly's cron or duration.

Two ways to run them, both against a Prefect server (``PREFECT_API_URL``; Prefect's
scheduler does not run in its throwaway ephemeral server):

- ``autopilot schedule``: ``prefect.serve`` in this foreground process; the deployments
  are Ready while it runs and Not Ready once it stops.
- ``autopilot schedule --work-pool NAME``: the deployments go to a process work pool
  (created by the product when missing; another pool of that name is used as it is, never
  changed) with this checkout's module paths as entry points, so a worker started in this
  venv (``autopilot worker --work-pool NAME``) runs them; they stay Ready while a worker
  polls, and the deploying process can exit.

Schedules live here and in the settings, never in the flows' logic.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from controlplane.schedules import (
    VERIFY_DEPLOYMENT,
    VERIFY_GUARD,
    quarter_that_ended,
    verify_after_nightly,
    verify_start_after_nightly,
)

__all__ = [
    "POOL_MARK",
    "QUARTERLY_CRON",
    "VERIFY_DEPLOYMENT",
    "VERIFY_GUARD",
    "DeploymentSpec",
    "PrefectServerRequired",
    "WorkPoolRefused",
    "deploy_to_work_pool",
    "deployment_specs",
    "ensure_work_pool",
    "main",
    "pool_action",
    "quarter_that_ended",
    "require_prefect_server",
    "serve_deployments",
    "verify_after_nightly",
    "verify_start_after_nightly",
    "worker_command",
]

QUARTERLY_CRON = "0 6 1 1,4,7,10 *"
POOL_MARK = "made by fleet autopilot (autopilot schedule --work-pool)"


class PrefectServerRequired(PermanentError):
    """The work-pool mode needs a Prefect server that the deployer and worker share."""


class WorkPoolRefused(PermanentError):
    """A pool of that name exists and cannot run the loop's flows."""


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    flow: str  # attribute of controlplane.flows
    cron: str | None  # None: started by another flow (verify: by the nightly's end)
    timezone: str
    parameters: dict[str, Any] = field(default_factory=dict)


def deployment_specs(settings: Any, state_dir: str | Path) -> list[DeploymentSpec]:
    """What to schedule, as data (pure): tests and ``--dry-run`` read it."""
    params = {"state_dir": str(state_dir)}
    tz = settings.timezone
    return [
        DeploymentSpec("autopilot-nightly", "nightly", settings.nightly_cron, tz, params),
        DeploymentSpec("autopilot-verify", "verify", None, tz, params),
        DeploymentSpec("autopilot-quarterly-report", "quarterly_report", QUARTERLY_CRON, tz,
                       params),
    ]


# ------------------------------------------------------------------------ pure rules
def pool_action(existing_type: str | None, *, wanted_type: str = "process") -> str:
    """What to do with the work pool of the given name: ``"create"`` it when there is none,
    ``"use"`` one of the wanted type as it is (the product never changes a pool), refuse
    any other (its workers could not run this checkout's flows)."""
    if existing_type is None:
        return "create"
    if existing_type == wanted_type:
        return "use"
    raise WorkPoolRefused(f"work pool exists with type {existing_type!r}; the loop's flows "
                          f"need a {wanted_type!r} pool: choose another --work-pool name")


def worker_command(pool: str, python: str | None = None) -> list[str]:
    """The process worker for ``pool``, run by this venv's Python (it imports the flows from
    this checkout); it never creates a pool: ``autopilot schedule --work-pool`` does."""
    return [python or sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
            "--type", "process", "--no-create-pool-if-not-found"]


# ------------------------------------------------------------------------ adapters
def _prefect_deployments(specs: list[DeploymentSpec], root: Path, **extra: Any) -> list[Any]:
    from prefect.schedules import Cron

    from controlplane import flows

    return [
        getattr(flows, s.flow).to_deployment(
            name=s.name, schedules=[Cron(s.cron, timezone=s.timezone)] if s.cron else [],
            parameters=s.parameters, description=f"{s.flow} for {root}", **extra)
        for s in specs
    ]


def serve_deployments(state: Any, *, dry_run: bool = False) -> list[DeploymentSpec]:
    """Register the deployments and run their schedules in this process until interrupted."""
    from controlplane.loop.waiting import prefect_environment

    specs = deployment_specs(state.settings(), state.root)
    if dry_run:
        return specs
    prefect_environment(state)
    from prefect import serve

    serve(*_prefect_deployments(specs, state.root))
    return specs


def require_prefect_server() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PrefectServerRequired(
            "a work pool needs a Prefect server shared by this command and the worker: start "
            "one (`PREFECT_HOME=$AUTOPILOT_HOME/prefect prefect server start`) and set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) for both")
    return url


def ensure_work_pool(pool: str) -> str:
    """Create the process pool ``pool`` when missing; says what was done."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool).type
        except ObjectNotFound:
            existing = None
        action = pool_action(existing)
        if action == "create":
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", description=POOL_MARK,
                base_job_template=ProcessWorker.get_default_base_job_template()))
        return action


def deploy_to_work_pool(state: Any, pool: str, *, dry_run: bool = False
                        ) -> tuple[list[DeploymentSpec], str]:
    """Create the pool if missing and deploy the three flows to it; returns the specs and
    what was done to the pool. The entry points are module paths (``controlplane.flows.*``),
    so the worker runs them from this venv: no image, no code storage."""
    from controlplane.loop.waiting import prefect_environment

    specs = deployment_specs(state.settings(), state.root)
    if dry_run:
        return specs, "dry run"
    prefect_environment(state)
    require_prefect_server()
    from prefect.deployments.runner import EntrypointType

    action = ensure_work_pool(pool)
    # paused=False: serve mode pauses its schedules when it stops; deploying resumes them.
    for deployment in _prefect_deployments(specs, state.root, paused=False,
                                           entrypoint_type=EntrypointType.MODULE_PATH):
        deployment.apply(work_pool_name=pool)
    return specs, action


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin
    from controlplane.settings import resolve_state_dir

    args = sys.argv[1:] if argv is None else argv
    state = resolve_state_dir(args[0] if args else None)
    serve_deployments(state)


if __name__ == "__main__":  # pragma: no cover
    main()
