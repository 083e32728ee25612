"""Waiting for a platform owner: Prefect's pause-for-input, bridged to the CLI and the store.

Inside the nightly flow, ``wait_for_owner`` records which flow run waits for which proposal
(an ``approval.waiting`` audit entry), then pauses the run with Prefect's
``pause_flow_run(wait_for_input=ApprovalInput)``, so an owner can answer from the Prefect UI
form. ``autopilot proposals approve|reject`` records the decision in the store first and
then resumes that run with the same input (``resume_waiting_flow``). On resume the store is
the source of truth: a decision already recorded by the CLI wins; otherwise the UI's input
is authorised like a CLI decision and recorded. A timeout counts as a rejection, recorded as
such.

Prefect names the pause's inputs ``paused-<key>-schema`` / ``paused-<key>-response`` and
refuses any key but lower-case letters, digits and dashes, so the key is derived from the
proposal id (``pause_key``), never the id itself (``P-...`` is refused).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from controlplane.loop.approvals import NotAuthorised, authorise

if TYPE_CHECKING:  # pragma: no cover
    from controlplane.settings import StateDir

__all__ = [
    "TIMEOUT_ACTOR",
    "WAITING_ACTION",
    "ApprovalInput",
    "OwnerDecision",
    "pause_key",
    "prefect_environment",
    "resume_waiting_flow",
    "wait_for_owner",
]

WAITING_ACTION = "approval.waiting"
TIMEOUT_ACTOR = "autopilot-timeout"


class ApprovalInput(BaseModel):
    """The form Prefect's UI shows for a paused nightly run."""

    approve: bool
    approver: str
    reason: str = ""


_NOT_KEY_CHARS = re.compile(r"[^a-z0-9]+")


def pause_key(proposal_id: str) -> str:
    """The Prefect pause key for ``proposal_id``: deterministic, only lower-case letters,
    digits and dashes (what Prefect accepts in a run-input key), readable (the id
    lower-cased), and distinct for distinct ids (a digest of the exact id, so ``P-ab`` and
    ``p-ab`` never share a form). ``P-0a1b2c3d4e`` -> ``approval-p-0a1b2c3d4e-<8 hex>``."""
    slug = _NOT_KEY_CHARS.sub("-", proposal_id.lower()).strip("-")[:48].rstrip("-")
    digest = hashlib.sha256(proposal_id.encode()).hexdigest()[:8]
    return f"approval-{slug}-{digest}" if slug else f"approval-{digest}"


@dataclass(frozen=True)
class OwnerDecision:
    approve: bool
    approver: str
    reason: str
    via: str  # "cli", "prefect-ui", "timeout", "recorded"


def prefect_environment(state: StateDir) -> None:
    """Give Prefect this state directory's own home (a database migrated by another Prefect
    version would refuse to start) and keep it quiet and local."""
    home = state.prefect_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    # The ephemeral API starts in a subprocess; on two busy cores 20 s is not always enough.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _recorded(store: Any, proposal_id: str) -> OwnerDecision | None:
    approval = store.get_approval(proposal_id)
    if approval is None:
        return None
    return OwnerDecision(approval.decision.value == "approve", approval.approver,
                         approval.reason, "recorded")


def wait_for_owner(store: Any, proposal: Any, *, owners: list[str], timeout_s: int,
                   poll_interval_s: int = 5) -> OwnerDecision:
    """Block the running flow until an owner decides ``proposal`` (or the timeout)."""
    from prefect import pause_flow_run
    from prefect.exceptions import FlowPauseTimeout
    from prefect.runtime import flow_run

    earlier = _recorded(store, proposal.proposal_id)
    if earlier is not None:
        return earlier
    key = pause_key(proposal.proposal_id)
    store.audit_append(actor="autopilot-nightly", action=WAITING_ACTION,
                       subject=proposal.proposal_id,
                       payload={"flow_run_id": str(flow_run.id), "timeout_s": timeout_s,
                                "pause_key": key})
    # A CLI decision recorded before the entry above found no run to resume: read it now.
    # One recorded after it finds this run and resumes it (waiting until it is paused).
    earlier = _recorded(store, proposal.proposal_id)
    if earlier is not None:
        return earlier
    try:
        answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=timeout_s,
                                poll_interval=poll_interval_s, key=key)
    except FlowPauseTimeout:
        answer = None
    recorded = _recorded(store, proposal.proposal_id)
    if recorded is not None:
        return OwnerDecision(recorded.approve, recorded.approver, recorded.reason, "cli")
    if answer is None:
        reason = f"no decision within {timeout_s} s: counted as a rejection"
        store.record_decision(proposal.proposal_id, approver=TIMEOUT_ACTOR, decision="reject",
                              reason=reason)
        return OwnerDecision(False, TIMEOUT_ACTOR, reason, "timeout")
    try:
        who = authorise(answer.approver, author=proposal.created_by, owners=owners)
    except NotAuthorised as refused:
        reason = f"refused input from the Prefect UI ({refused}): counted as a rejection"
        store.record_decision(proposal.proposal_id, approver=TIMEOUT_ACTOR, decision="reject",
                              reason=reason)
        return OwnerDecision(False, TIMEOUT_ACTOR, reason, "prefect-ui")
    decision = "approve" if answer.approve else "reject"
    store.record_decision(proposal.proposal_id, approver=who, decision=decision,
                          reason=answer.reason or f"{decision} from the Prefect UI")
    return OwnerDecision(answer.approve, who, answer.reason, "prefect-ui")


def resume_waiting_flow(state: StateDir, store: Any, proposal_id: str, *, approver: str,
                        approve: bool, reason: str, settle_s: float = 30.0,
                        poll_s: float = 0.5) -> str:
    """Resume the nightly run paused on ``proposal_id``, if one is, with the decision as its
    input (what the Prefect UI form sends); says what happened.

    The run records that it waits a moment before Prefect marks it paused: while it is
    still running, retry for up to ``settle_s``. A run already finished (or resumed by
    someone else) is left alone: the decision is on record and the nightly reads it."""
    waiting = store.audit_entries(subject=proposal_id, action=WAITING_ACTION)
    if not waiting:
        return "no nightly run is waiting on this proposal"
    flow_run_id = waiting[-1].payload.get("flow_run_id")
    prefect_environment(state)
    run_input = ApprovalInput(approve=approve, approver=approver, reason=reason).model_dump()
    try:
        from uuid import UUID

        from prefect import resume_flow_run
        from prefect.exceptions import NotPausedError

        run_id = UUID(flow_run_id)
        deadline = time.monotonic() + settle_s
        while True:
            try:
                resume_flow_run(run_id, run_input=run_input)
                return f"resumed nightly run {flow_run_id}"
            except NotPausedError:
                run_state = _flow_run_state(run_id)
                if run_state is None or run_state.is_final() or time.monotonic() >= deadline:
                    name = run_state.name if run_state is not None else "unknown"
                    return (f"decision recorded; run {flow_run_id} is {name}, not paused: "
                            "nothing to resume (the nightly reads the decision from the store)")
                time.sleep(poll_s)
    except Exception as exc:  # noqa: BLE001 - foreign errors end here: the decision is recorded
        return f"decision recorded; run {flow_run_id} not resumed ({type(exc).__name__}: {exc})"


def _flow_run_state(flow_run_id: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state
