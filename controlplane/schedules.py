"""When the loop's scheduled runs happen, as rules and the one Prefect hook that acts on them.

Kept apart from ``controlplane.deploy`` (which builds deployments from the flows) because the
flows use these rules too: the quarterly report reports ``quarter_that_ended``, and the
nightly flow's end-of-run hook (``verify_after_nightly``) asks for the verify run it owes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from contracts.errors import TransientError, retry_transient

__all__ = ["VERIFY_AFTER_STATES", "VERIFY_DEPLOYMENT", "VERIFY_GUARD", "prefect_call",
           "quarter_that_ended", "verify_after_nightly", "verify_start_after_nightly"]

T = TypeVar("T")

VERIFY_DEPLOYMENT = "autopilot-verify/autopilot-verify"  # <flow name>/<deployment name>
# A verify run takes minutes; one that would start closer than this to the next nightly is
# left to that nightly's own verify, so a verify never overlaps a nightly.
VERIFY_GUARD = timedelta(hours=1)
# Final states after which the night is over and its verify is owed. A failed night still
# leaves a canary or a promotion to judge; a run an operator cancelled is left alone.
VERIFY_AFTER_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED"})


def quarter_that_ended(now: datetime | date) -> str:
    """The last whole quarter before ``now`` (read in ``now``'s own time zone): the
    quarterly run at 06:00 on 1 April reports 2026Q1, on 1 January the previous year's Q4."""
    day = now.date() if isinstance(now, datetime) else now
    current = (day.month - 1) // 3 + 1
    return f"{day.year - 1}Q4" if current == 1 else f"{day.year}Q{current - 1}"


def verify_start_after_nightly(finished_at: datetime, *, from_deployment: bool,
                               final_state: str, next_nightly_at: datetime | None,
                               guard: timedelta = VERIFY_GUARD) -> datetime | None:
    """When the verify run owed by a nightly run that ended at ``finished_at`` starts, or
    None for none: right away, after a deployed run (scheduled by Prefect) that ended in a
    state in ``VERIFY_AFTER_STATES``, unless the next nightly is due within ``guard`` (that
    night's end asks for its own verify). A run started by hand (``autopilot nightly``) asks
    for nothing: whoever started it runs ``autopilot verify`` when they want one."""
    if not from_deployment or final_state.upper() not in VERIFY_AFTER_STATES:
        return None
    if next_nightly_at is not None and next_nightly_at - finished_at < guard:
        return None
    return finished_at


def _next_scheduled_nightly(client: Any, deployment_id: Any, after: datetime
                            ) -> datetime | None:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=after)),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
    return runs[0].expected_start_time if runs else None


def prefect_call(fn: Callable[[], T], *, attempts: int = 4, base_delay_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call the Prefect API through ``fn``, retrying with backoff what may pass on a second
    try (the server busy: a 5xx or 429 answer, as when its database is locked; the
    connection refused or timed out), then raising ``TransientError``; any other answer is
    raised at once. Only idempotent calls go through here: a repeated ``run_deployment``
    carries an idempotency key."""
    import httpx

    def once() -> T:
        try:
            return fn()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code >= 500 or exc.response.status_code == 429:
                raise TransientError(f"Prefect API answered {exc.response.status_code}") from exc
            raise
        except httpx.TransportError as exc:
            raise TransientError(f"Prefect API unreachable: {type(exc).__name__}") from exc

    return retry_transient(once, attempts=attempts, base_delay_s=base_delay_s,
                           max_delay_s=8 * base_delay_s, sleep=sleep)


def verify_after_nightly(flow_: Any, flow_run: Any, state: Any) -> None:
    """Prefect state hook of the nightly flow: ask for the verify run it owes
    (``verify_start_after_nightly``), retrying a busy server (``prefect_call``). Never
    fails the night: a problem is logged."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run)
    finished_at = datetime.now(UTC)
    try:
        next_nightly = None
        if flow_run.deployment_id is not None:
            with get_client(sync_client=True) as client:
                next_nightly = prefect_call(lambda: _next_scheduled_nightly(
                    client, flow_run.deployment_id, finished_at))
        start = verify_start_after_nightly(
            finished_at, from_deployment=flow_run.deployment_id is not None,
            final_state=state.type.value, next_nightly_at=next_nightly)
        if start is None:
            why = ("started by hand: `autopilot verify` runs one" if next_nightly is None
                   and flow_run.deployment_id is None else
                   f"ended {state.type.value.lower()}" if next_nightly is None else
                   f"the next nightly is due at {next_nightly.isoformat()}: its end asks")
            logger.info("no verify run asked for (%s)", why)
            return
        run = prefect_call(lambda: run_deployment(
            VERIFY_DEPLOYMENT, parameters={"state_dir": flow_run.parameters["state_dir"]},
            scheduled_time=start, timeout=0, as_subflow=False,
            idempotency_key=f"verify-after-{flow_run.id}"))
        logger.info("verify run %s asked for, starting %s", run.id, start.isoformat())
    except Exception as exc:  # noqa: BLE001 - the night's outcome stands whatever happens
        logger.warning("could not ask for the verify run (%s: %s); run `autopilot verify`",
                       type(exc).__name__, exc)
