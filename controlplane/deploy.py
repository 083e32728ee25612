"""The deployment entry point: Prefect's own scheduler runs the loop's flows.

``autopilot schedule`` (or ``python -m controlplane.deploy``) serves three deployments from
this process: ``nightly`` on ``nightly_cron`` (``autopilot.yaml``, default 02:00), ``verify``
an hour after it, and ``quarterly_report`` on the first day of each quarter. Schedules live
here and in the settings, never in the flows' logic. On a Prefect server with a work pool the
same specs deploy with ``flow.deploy`` instead; nothing else changes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DeploymentSpec", "deployment_specs", "main", "serve_deployments"]


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    flow: str  # attribute of controlplane.flows
    cron: str
    timezone: str
    parameters: dict[str, Any] = field(default_factory=dict)


def _shift_hour(cron: str, hours: int) -> str:
    """The same schedule ``hours`` later, when its hour field is a plain number."""
    parts = cron.split()
    if len(parts) == 5 and parts[1].isdigit():
        parts[1] = str((int(parts[1]) + hours) % 24)
        return " ".join(parts)
    return cron


def deployment_specs(settings: Any, state_dir: str | Path) -> list[DeploymentSpec]:
    """What to schedule, as data (pure): tests and ``--dry-run`` read it."""
    params = {"state_dir": str(state_dir)}
    tz = settings.timezone
    return [
        DeploymentSpec("autopilot-nightly", "nightly", settings.nightly_cron, tz, params),
        DeploymentSpec("autopilot-verify", "verify", _shift_hour(settings.nightly_cron, 1), tz,
                       params),
        DeploymentSpec("autopilot-quarterly-report", "quarterly_report", "0 6 1 1,4,7,10 *", tz,
                       params),
    ]


def serve_deployments(state: Any, *, dry_run: bool = False) -> list[DeploymentSpec]:
    """Register the deployments and run their schedules until interrupted."""
    from controlplane.loop.waiting import prefect_environment

    specs = deployment_specs(state.settings(), state.root)
    if dry_run:
        return specs
    prefect_environment(state)
    from prefect import serve
    from prefect.schedules import Cron

    from controlplane import flows

    deployments = [
        getattr(flows, s.flow).to_deployment(
            name=s.name, schedules=[Cron(s.cron, timezone=s.timezone)], parameters=s.parameters,
            description=f"{s.flow} for {state.root}")
        for s in specs
    ]
    serve(*deployments)
    return specs


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin
    from controlplane.settings import resolve_state_dir

    args = sys.argv[1:] if argv is None else argv
    state = resolve_state_dir(args[0] if args else None)
    serve_deployments(state)


if __name__ == "__main__":  # pragma: no cover
    main()
