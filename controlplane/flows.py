"""The Prefect flows of the loop: ``nightly``, ``verify`` and ``quarterly_report``.

Flows only sequence tasks. Each task wraps one adapter call (store, warehouse, search,
gates, fleet) or one pure decision from ``controlplane.loop``; only I/O tasks retry, and
only on ``TransientError``. A rerun over the same window is harmless: proposals are keyed
by (candidate, baseline, window) and promotion of an active proposal is a no-op; a lease in
the store keeps two nightly runs from overlapping. Schedules live in
``controlplane.deploy``, not here.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contracts.errors import TransientError
from controlplane.settings import StateDir

__all__ = ["NIGHTLY_LEASE", "nightly", "quarterly_report", "verify"]

NIGHTLY_LEASE = "nightly"
ACTOR = "autopilot-nightly"
VERIFY_ACTOR = "autopilot-verify"


def _only_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry an I/O task only when it failed with a TransientError."""
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is permanent: never retried
        return False
    return False


io_task = task(retries=3, retry_delay_seconds=[1, 4, 10], retry_condition_fn=_only_transient,
               cache_policy=NO_CACHE, persist_result=False)
pure_task = task(cache_policy=NO_CACHE, persist_result=False)


def _state(state_dir: str) -> StateDir:
    return StateDir(Path(state_dir))


def _store(state_dir: str):
    from store import Store

    return Store.open(_state(state_dir).store_url())


def _fleet(state_dir: str):
    from contracts.manifest import load_fleet

    return load_fleet(_state(state_dir).fleet_path)


def _say(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run context: plain output
        print(message, flush=True)


# ------------------------------------------------------------------------------ tasks
@io_task
def take_lease(state_dir: str, holder: str, ttl_s: float) -> bool:
    with _store(state_dir) as store:
        return store.acquire_lease(NIGHTLY_LEASE, holder, ttl_s)


@io_task
def release_lease(state_dir: str, holder: str) -> bool:
    with _store(state_dir) as store:
        return store.release_lease(NIGHTLY_LEASE, holder)


@io_task
def ingest_spans(state_dir: str) -> dict[str, Any]:
    """Ingest every span file under spans/ (idempotent: stored spans are skipped)."""
    from controlplane.bootstrap import record_ingest
    from telemetry.ingest import ingest_paths

    state = _state(state_dir)
    files = sorted(p for p in state.spans_dir.rglob("*.jsonl") if p.is_file())
    if not files:
        return {"files": 0}
    report = ingest_paths(files, state.telemetry_dir).as_dict()
    with _store(state_dir) as store:
        record_ingest(store, report)
    return {"files": len(files), **report}


@io_task
def observe(state_dir: str, since: str, until: str) -> dict[str, Any]:
    """Metrics and the FinOps register of the window."""
    from controlplane.views import finops_rows, metrics_rows

    state = _state(state_dir)
    fleet = _fleet(state_dir)
    rows = metrics_rows(state, fleet, [], since, until)
    register, budgets = finops_rows(state, fleet, since, until)
    return {"metrics": rows[0] if rows else {}, "register": register, "budgets": budgets}


@io_task
def load_window(state_dir: str, since: str, until: str):
    from experiments import load_window as read

    state = _state(state_dir)
    return read(state.telemetry_dir, since, until, fleet=_fleet(state_dir),
                default_verifier_cost_usd=state.settings().default_verifier_cost_usd)


@pure_task
def learn(window: Any, seed: int):
    """Outcome models P(pass | features, tier, variant, adapter) from the window."""
    from experiments import fit_outcome_models

    return fit_outcome_models(window, seed=seed)


@pure_task
def propose(window: Any, state_dir: str, models: Any, levers: Any, search: dict[str, Any]):
    """Ray Tune search per lever and jointly, against the counterfactual estimate."""
    from experiments.search import search as run_search

    with _store(state_dir) as store:
        active = store.active_policy().policy
    return run_search(window, _fleet(state_dir), active, levers=levers, models=models,
                      progress=True, **search)


@pure_task
def distill(state_dir: str, since: str, until: str) -> dict[str, Any]:
    """The distillation step (off unless ``distillation.nightly``): rank families, train
    the best qualifying one's adapter on Ray within the step budget (docs/distillation.md).
    Fail open: its errors are reported, never stop the night."""
    from controlplane.loop.distill import nightly_distill

    try:
        return nightly_distill(_state(state_dir), since, until, echo=_say)
    except Exception as exc:  # noqa: BLE001 - an optional step never blocks the loop
        return {"error": f"{type(exc).__name__}: {exc}"}


@pure_task
def choose(candidates: Any, proposed_hashes: list[str], max_gated: int, min_saving: float):
    from controlplane.loop.nightly import choose_for_gating

    return choose_for_gating(candidates, proposed_hashes=proposed_hashes, max_gated=max_gated,
                             min_saving=min_saving)


@io_task
def window_acted(state_dir: str, window_label: str) -> str | None:
    from controlplane.loop.nightly import window_already_acted

    with _store(state_dir) as store:
        return window_already_acted(store.list_proposals(), window_label)


@io_task
def unfinished(state_dir: str, window_label: str) -> list[str] | None:
    from controlplane.loop.nightly import unfinished_proposals

    with _store(state_dir) as store:
        found = unfinished_proposals(store.list_proposals(), window_label,
                                     store.active_policy().version)
        return None if found is None else [p.proposal_id for p in found]


@io_task
def proposal_state(state_dir: str, proposal_id: str) -> tuple[str, str | None]:
    with _store(state_dir) as store:
        p = store.get_proposal(proposal_id)
        return p.state.value, p.gate_verdict.value if p.gate_verdict else None


@io_task
def proposed_hashes(state_dir: str, window_label: str) -> list[str]:
    """Candidate hashes already proposed against the active policy for this window."""
    with _store(state_dir) as store:
        active = store.active_policy()
        return [p.candidate_hash for p in store.list_proposals()
                if p.window == window_label and p.baseline_version == active.version]


@io_task
def record_proposal(state_dir: str, candidate: Any, window_label: str,
                    predicted: dict[str, Any]) -> str:
    from controlplane.loop.gating import store_candidate

    with _store(state_dir) as store:
        active = store.active_policy()
        policy, _note = store_candidate(store, candidate.policy, baseline_version=active.version,
                                        actor=ACTOR)
        p = store.create_proposal(candidate_version=policy.metadata.version,
                                  baseline_version=active.version, lever=candidate.lever,
                                  window=window_label, predicted=predicted, actor=ACTOR)
        return p.proposal_id


@pure_task
def gate(state_dir: str, proposal_id: str, serving: Any, dry_run: bool) -> str:
    """Every gate through the serving port; anything but PASSED blocks. Fail closed: an
    exception anywhere is recorded as ERROR with its reason."""
    from controlplane.loop.gating import gate_proposal

    return gate_proposal(_state(state_dir), proposal_id, serving=serving, dry_run=dry_run,
                         echo=_say)


@io_task
def to_awaiting(state_dir: str, proposal_id: str) -> str:
    from store import ProposalState

    with _store(state_dir) as store:
        p = store.get_proposal(proposal_id)
        if p.state == ProposalState.GATED:
            p = store.transition_proposal(proposal_id, ProposalState.AWAITING_APPROVAL,
                                          actor=ACTOR, reason="gates PASSED")
        return p.state.value


@pure_task
def decide(state_dir: str, proposal_id: str, approver: str | None) -> dict[str, Any]:
    """Auto-approval rule, the named (demo) approver, or a platform owner via pause."""
    from controlplane.loop.approvals import authorise, auto_decision
    from controlplane.loop.waiting import wait_for_owner

    state = _state(state_dir)
    settings = state.settings()
    with _store(state_dir) as store:
        p = store.get_proposal(proposal_id)
        earlier = store.get_approval(proposal_id)
        if earlier is not None:
            return {"approve": earlier.decision.value == "approve", "by": earlier.approver,
                    "via": "recorded", "reason": earlier.reason}
        auto = auto_decision(lever=p.lever, gate_verdict=p.gate_verdict.value
                             if p.gate_verdict else None, predicted=p.predicted,
                             rules=settings.auto_approve)
        if auto.approve:
            store.record_decision(proposal_id, approver=auto.rule or "auto", decision="approve",
                                  reason=auto.reason)
            return {"approve": True, "by": auto.rule, "via": "auto-approval", "reason": auto.reason}
        if approver:
            authorise(approver, author=p.created_by, owners=settings.platform_owners)
            store.record_decision(proposal_id, approver=approver, decision="approve",
                                  reason=f"approved by {approver} (non-interactive run)")
            return {"approve": True, "by": approver, "via": "named approver",
                    "reason": "non-interactive run"}
        decision = wait_for_owner(store, p, owners=settings.platform_owners,
                                  timeout_s=settings.approval_timeout_s)
        return {"approve": decision.approve, "by": decision.approver, "via": decision.via,
                "reason": decision.reason}


@io_task
def promote(state_dir: str, proposal_id: str) -> int:
    from controlplane.loop.promotion import promote_approved

    with _store(state_dir) as store:
        record = promote_approved(store, proposal_id, actor=ACTOR, reason="approved and gated")
        return record.version


@io_task
def write_report(state_dir: str, proposal_id: str) -> dict[str, str]:
    from controlplane.reports import write_change_report

    with _store(state_dir) as store:
        return write_change_report(_state(state_dir), store, _fleet(state_dir), proposal_id)


# ------------------------------------------------------------------------------ flows
@flow(name="autopilot-nightly", log_prints=True)
def nightly(state_dir: str, since: str | None = None, until: str | None = None,
            levers: list[str] | str = "all", max_gated: int = 2, min_saving: float = 0.02,
            gateway_url: str | None = None, approver: str | None = None,
            dry_run: bool = False, seed: int = 0,
            search: dict[str, Any] | None = None, gate_serving: Any = None) -> dict[str, Any]:
    """observe -> learn -> propose and experiment -> gate -> propose -> approve -> promote.

    The gates run through ``gate_serving`` (a ``controlplane.loop.gating.GateServing``; an
    in-process caller such as the demo hands over its fleet), else through the gateway at
    ``gateway_url``, else through a fleet started for the run."""
    from controlplane.loop.gating import serving_for
    from controlplane.loop.nightly import default_window, predicted_record

    serving = gate_serving or serving_for(_state(state_dir), gateway_url=gateway_url)

    if since is None or until is None:
        since, until = default_window(datetime.now(UTC).date())
    window_label = since if since == until else f"{since}..{until}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    summary: dict[str, Any] = {"window": window_label, "proposals": []}
    if not take_lease(state_dir, holder, ttl_s=6 * 3600):
        summary["skipped"] = "another nightly run holds the lease"
        _say(summary["skipped"])
        return summary
    try:
        done = window_acted(state_dir, window_label)
        if done:
            summary["skipped"] = done
            _say(done)
            return summary
        resume = unfinished(state_dir, window_label)
        if resume is not None:
            summary["resumed"] = resume
            _carry_through(state_dir, resume, summary, serving, approver, dry_run)
            return summary
        summary["ingest"] = ingest_spans(state_dir)
        observed = observe(state_dir, since, until)
        summary["observed"] = observed["metrics"]
        if not observed["metrics"]:
            summary["skipped"] = f"no telemetry in {window_label}"
            return summary
        if _state(state_dir).settings().distillation.nightly:
            summary["distillation"] = distill(state_dir, since, until)
        window = load_window(state_dir, since, until)
        models = learn(window, seed)
        candidates = propose(window, state_dir, models, levers,
                             {"seed": seed, **(search or {})})
        summary["searched"] = {"evaluated": getattr(candidates, "evaluated", None),
                               "trials": getattr(candidates, "trials", None),
                               "ranked": len(candidates)}
        choice = choose(candidates, proposed_hashes(state_dir, window_label), max_gated,
                        min_saving)
        summary["skipped_candidates"] = choice.skipped
        active_estimate = getattr(candidates, "active_estimate", None)
        todo = [record_proposal(state_dir, c, window_label, predicted_record(c, active_estimate))
                for c in choice.chosen]
        _carry_through(state_dir, todo, summary, serving, approver, dry_run)
        return summary
    finally:
        release_lease(state_dir, holder)


def _carry_through(state_dir: str, proposal_ids: list[str], summary: dict[str, Any],
                   serving: Any, approver: str | None, dry_run: bool) -> None:
    """Move each proposal along its lifecycle as far as tonight allows (sequencing only:
    every decision is ``next_step``); stop after the first promotion."""
    from controlplane.loop.nightly import next_step

    for pid in proposal_ids:
        entry: dict[str, Any] = {"proposal_id": pid}
        summary["proposals"].append(entry)
        for _ in range(6):  # the lifecycle has fewer steps than this
            state, verdict = proposal_state(state_dir, pid)
            step = next_step(state=state, gate_verdict=verdict, auto_approves=False,
                             dry_run=dry_run)
            if step.action == "gate":
                entry["gates"] = gate(state_dir, pid, serving, dry_run)
                if dry_run:
                    entry["stopped"] = "dry run"
                    break
            elif step.action == "await_approval" and state == "gated":
                to_awaiting(state_dir, pid)
            elif step.action == "await_approval":
                entry["decision"] = decide(state_dir, pid, approver)
            elif step.action == "promote":
                entry["active_version"] = promote(state_dir, pid)
                break
            else:
                entry["stopped"] = step.reason
                break
        entry["state"] = proposal_state(state_dir, pid)[0]
        entry["report"] = write_report(state_dir, pid)
        if "active_version" in entry:
            break  # one promotion a night: the next night judges it


@io_task
def verify_active(state_dir: str, since: str | None, until: str | None) -> dict[str, Any]:
    from controlplane.loop.verify_adapter import verify_promoted

    with _store(state_dir) as store:
        return verify_promoted(_state(state_dir), store, _fleet(state_dir), since=since,
                               until=until, actor=VERIFY_ACTOR)


@flow(name="autopilot-verify", log_prints=True)
def verify(state_dir: str, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Realised against predicted for the active proposal; roll back on a regression."""
    ingest_spans(state_dir)
    result = verify_active(state_dir, since, until)
    if result.get("proposal_id"):
        result["report"] = write_report(state_dir, result["proposal_id"])
    return result


@io_task
def write_quarterly(state_dir: str, quarter: str) -> dict[str, str]:
    from controlplane.reports import write_quarterly_report

    with _store(state_dir) as store:
        return write_quarterly_report(_state(state_dir), store, _fleet(state_dir), quarter)


@flow(name="autopilot-quarterly-report", log_prints=True)
def quarterly_report(state_dir: str, quarter: str | None = None) -> dict[str, str]:
    if quarter is None:
        today = date.today()
        quarter = f"{today.year}Q{(today.month - 1) // 3 + 1}"
    return write_quarterly(state_dir, quarter)


