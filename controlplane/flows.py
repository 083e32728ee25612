"""The Prefect flows of the loop: ``nightly``, ``verify`` and ``quarterly_report``.

Flows only sequence tasks. Each task wraps one adapter call (store, warehouse, search,
gates, fleet) or one pure decision from ``controlplane.loop``; only I/O tasks retry, and
only on ``TransientError``. A rerun over the same window is harmless: proposals are keyed
by (candidate, baseline, window) and promotion of an active proposal is a no-op; a lease in
the store keeps two nightly runs from overlapping. Schedules live in
``controlplane.deploy``, not here; so does the nightly's end-of-run hook that asks for the
verify run (``verify_after_nightly``) and the quarter a scheduled report covers.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from contracts.errors import TransientError
from contracts.prediction import Prediction
from controlplane.loop.approvals import Approval
from controlplane.loop.context import LoopContext
from controlplane.schedules import quarter_that_ended, verify_after_nightly

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


def _say(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run context: plain output
        print(message, flush=True)


# ------------------------------------------------------------------------------ tasks
@io_task
def take_lease(ctx: LoopContext, holder: str, ttl_s: float) -> bool:
    """Take the nightly lease; a lease held by a run on this host whose process is gone (a
    crashed nightly) is broken first, audited with the reason (``loop.lease``)."""
    from controlplane.loop.lease import pid_alive, stale_reason

    if ctx.store.acquire_lease(NIGHTLY_LEASE, holder, ttl_s):
        return True
    current = ctx.store.get_lease(NIGHTLY_LEASE)
    if current is None:  # released in between
        return ctx.store.acquire_lease(NIGHTLY_LEASE, holder, ttl_s)
    reason = stale_reason(current.holder, socket.gethostname(), pid_alive)
    if reason is None:
        return False
    if ctx.store.release_lease(NIGHTLY_LEASE, current.holder):  # only if still that holder
        ctx.store.audit_append(
            actor=ACTOR, action="lease.broken", subject=f"lease:{NIGHTLY_LEASE}",
            payload={"holder": current.holder, "by": holder, "reason": reason,
                     "acquired_at": current.acquired_at.isoformat(),
                     "expires_at": current.expires_at.isoformat()})
        _say(f"broke the nightly lease of {current.holder}: {reason}")
    return ctx.store.acquire_lease(NIGHTLY_LEASE, holder, ttl_s)


@io_task
def release_lease(ctx: LoopContext, holder: str) -> bool:
    return ctx.store.release_lease(NIGHTLY_LEASE, holder)


@io_task
def ingest_spans(ctx: LoopContext) -> dict[str, Any]:
    """Ingest every span file under spans/ (idempotent: stored spans are skipped)."""
    from controlplane.bootstrap import record_ingest

    files = sorted(p for p in ctx.state.spans_dir.rglob("*.jsonl") if p.is_file())
    if not files:
        return {"files": 0}
    report = ctx.warehouse.ingest(files).as_dict()
    record_ingest(ctx.store, report)
    return {"files": len(files), **report}


@io_task
def observe(ctx: LoopContext, since: str, until: str) -> dict[str, Any]:
    """Metrics and the FinOps register of the window."""
    from controlplane.views import finops_rows, metrics_rows

    rows = metrics_rows(ctx.state, ctx.fleet, [], since, until)
    register, budgets = finops_rows(ctx.state, ctx.fleet, since, until)
    return {"metrics": rows[0] if rows else {}, "register": register, "budgets": budgets}


@io_task
def spend_anomalies(ctx: LoopContext, since: str, until: str) -> dict[str, Any]:
    """Spend anomalies of the window (an hour or day above 3x its baseline, per team, tier
    and family), recorded in the store; the largest few named. Fail open."""
    from controlplane.spend import nightly_anomalies

    return nightly_anomalies(ctx.state, ctx.store, ctx.fleet, since, until, actor=ACTOR)


@io_task
def load_nightly_window(ctx: LoopContext, since: str, until: str):
    from experiments import load_estimator_window as read

    return read(ctx.telemetry_dir, since, until, fleet=ctx.fleet,
                default_verifier_cost_usd=ctx.settings.default_verifier_cost_usd)


@pure_task
def learn(window: Any, seed: int):
    """Outcome models P(pass | features, tier, variant, adapter) from the window."""
    from experiments import fit_outcome_models

    return fit_outcome_models(window, seed=seed)


@pure_task
def propose(window: Any, ctx: LoopContext, models: Any, levers: Any, search: dict[str, Any]):
    """Ray Tune search per lever and jointly, against the counterfactual estimate. Each
    lever's intervals are widened by the factor its calibration record gives
    (``controlplane.loop.calibration``: 1.0 while it is calibrated)."""
    from controlplane.loop.calibration import inflation_factors
    from experiments.search import search_candidates

    active = ctx.store.active_policy().policy
    widen = inflation_factors(ctx.store.calibration_records())
    found = search_candidates(window, ctx.fleet, active, levers=levers, models=models,
                              progress=True, **{"widen": widen, **search})
    found.widen = widen
    return found


@pure_task
def distill(ctx: LoopContext, since: str, until: str) -> dict[str, Any]:
    """The distillation step (off unless ``distillation.nightly``): rank families, train
    the best qualifying one's adapter on Ray within the step budget (docs/distillation.md).
    Fail open: its errors are reported, never stop the night."""
    from controlplane.loop.distill import nightly_distill

    try:
        return nightly_distill(ctx.state, since, until, echo=_say)
    except Exception as exc:  # noqa: BLE001 - an optional step never blocks the loop
        return {"error": f"{type(exc).__name__}: {exc}"}


@pure_task
def choose(candidates: Any, proposed_hashes: list[str], max_gated: int, min_saving: float):
    from controlplane.loop.nightly import choose_for_gating

    return choose_for_gating(candidates, proposed_hashes=proposed_hashes, max_gated=max_gated,
                             min_saving=min_saving)


@io_task
def window_acted(ctx: LoopContext, window_label: str) -> str | None:
    from controlplane.loop.nightly import window_already_acted

    return window_already_acted(ctx.store.list_proposals(), window_label)


@io_task
def unfinished(ctx: LoopContext, window_label: str) -> list[str] | None:
    from controlplane.loop.nightly import unfinished_proposals

    found = unfinished_proposals(ctx.store.list_proposals(), window_label,
                                 ctx.store.active_policy().version)
    return None if found is None else [p.proposal_id for p in found]


@io_task
def proposal_state(ctx: LoopContext, proposal_id: str) -> tuple[str, str | None]:
    p = ctx.store.get_proposal(proposal_id)
    return p.state.value, p.gate_verdict.value if p.gate_verdict else None


@io_task
def proposed_hashes(ctx: LoopContext, window_label: str) -> dict[str, str]:
    """Candidate hashes not to propose tonight, with why: proposed against the active policy
    for this window, or rejected / rolled back against the same baseline."""
    from controlplane.loop.nightly import not_again

    active = ctx.store.active_policy()
    return not_again(ctx.store.list_proposals(), window_label=window_label,
                     active_version=active.version, active_hash=active.policy.content_hash)


@pure_task
def exploration_bought(ctx: LoopContext, window: Any, candidates: Any) -> list[dict[str, Any]]:
    """When the active policy is an exploration change: what its shadows bought for the
    specs it was for (support and intervals before -> after, on tonight's window)."""
    from experiments.exploration import evidence_bought

    active = ctx.store.active_policy()
    mine = [p for p in ctx.store.list_proposals()
            if p.lever == "exploration" and p.candidate_version == active.version]
    if not mine or mine[0].predicted.exploration is None:
        return []
    return evidence_bought(mine[0].predicted.exploration.blocked, window, candidates,
                           active.policy)


@pure_task
def plan_explore(ctx: LoopContext, window: Any, candidates: Any, since: str, until: str,
                 min_saving: float):
    """Where thin evidence blocks a promising candidate: the exploration change, sized to
    the owner's budget (``experiments.exploration``)."""
    from controlplane.loop.nightly import window_days
    from experiments.exploration import plan_exploration

    return plan_exploration(candidates, window, ctx.store.active_policy().policy,
                            budget_share=ctx.settings.exploration.budget_share,
                            min_saving=min_saving, days=window_days(since, until))


@io_task
def record_proposal(ctx: LoopContext, candidate: Any, window_label: str,
                    predicted: Prediction) -> str:
    from controlplane.loop.gating import store_candidate

    active = ctx.store.active_policy()
    policy, _note = store_candidate(ctx.store, candidate.policy, baseline_version=active.version,
                                    actor=ACTOR)
    p = ctx.store.create_proposal(candidate_version=policy.metadata.version,
                                  baseline_version=active.version, lever=candidate.lever,
                                  window=window_label, predicted=predicted, actor=ACTOR)
    return p.proposal_id


@pure_task
def gate(ctx: LoopContext, proposal_id: str, dry_run: bool) -> str:
    """Every gate through the context's serving port; anything but PASSED blocks. Fail
    closed: an exception anywhere is recorded as ERROR with its reason."""
    from controlplane.loop.gating import gate_proposal

    return gate_proposal(ctx.state, ctx.store, proposal_id, serving=ctx.gates,
                         dry_run=dry_run, echo=_say)


@io_task
def to_awaiting(ctx: LoopContext, proposal_id: str, reason: str = "gates PASSED") -> str:
    from store import ProposalState

    p = ctx.store.get_proposal(proposal_id)
    if p.state == ProposalState.GATED:
        p = ctx.store.transition_proposal(proposal_id, ProposalState.AWAITING_APPROVAL,
                                          actor=ACTOR, reason=reason)
    return p.state.value


@io_task
def reject(ctx: LoopContext, proposal_id: str, reason: str) -> str:
    """Gates FAILED or ERROR: the proposal ends rejected with the gates' reason, and its spec
    is never proposed again against this baseline (``loop.nightly.not_again``)."""
    from store import ProposalState

    p = ctx.store.get_proposal(proposal_id)
    if p.state == ProposalState.GATED:
        p = ctx.store.transition_proposal(proposal_id, ProposalState.REJECTED, actor=ACTOR,
                                          reason=reason)
    return p.state.value


@pure_task
def decide(ctx: LoopContext, proposal_id: str, approver: str | None) -> Approval:
    """Auto-approval rule, the named (demo) approver, or a platform owner via pause."""
    from controlplane.loop.approvals import decide_proposal
    from controlplane.loop.waiting import wait_for_owner

    def ask_owner(p: Any) -> Approval:
        d = wait_for_owner(ctx.store, p, owners=ctx.settings.platform_owners,
                           timeout_s=ctx.settings.approval_timeout_s)
        return Approval(approve=d.approve, by=d.approver, via=d.via, reason=d.reason)

    return decide_proposal(ctx.store, ctx.store.get_proposal(proposal_id), approver=approver,
                           settings=ctx.settings, ask_owner=ask_owner)


@io_task
def running_rollout(ctx: LoopContext) -> str | None:
    from controlplane.loop.nightly import rollout_blocks

    return rollout_blocks(ctx.store.current_rollout())


@io_task
def start_canary(ctx: LoopContext, proposal_id: str, share: float) -> dict[str, Any]:
    """Progressive delivery: the approved candidate serves ``share`` of new tasks beside the
    active policy (the gateway follows the store without a restart). The same evidence
    checks as a promotion come first: no candidate meets traffic without its own gates."""
    from controlplane.loop.promotion import require_own_evidence

    require_own_evidence(ctx.store, ctx.store.get_proposal(proposal_id))
    r = ctx.store.start_rollout(proposal_id, share=share, actor=ACTOR,
                                reason=f"approved and gated: canary at {share:.0%} of new "
                                "tasks")
    return r.as_dict()


@io_task
def promote(ctx: LoopContext, proposal_id: str) -> int:
    from controlplane.loop.promotion import promote_approved

    record = promote_approved(ctx.store, proposal_id, actor=ACTOR, reason="approved and gated")
    return record.version


@io_task
def write_report(ctx: LoopContext, proposal_id: str) -> dict[str, str]:
    from controlplane.reports import write_change_report

    return write_change_report(ctx.state, ctx.store, ctx.fleet, proposal_id)


# ------------------------------------------------------------------------------ flows
@flow(name="autopilot-nightly", log_prints=True, on_completion=[verify_after_nightly],
      on_failure=[verify_after_nightly], on_crashed=[verify_after_nightly])
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
    from controlplane.loop.nightly import (
        choose_exploration,
        default_window,
        exploration_budget,
        levers_for_signals,
        predicted_record,
    )

    with LoopContext.open(state_dir) as ctx:
        ctx.gates = gate_serving or serving_for(ctx.state, gateway_url=gateway_url)
        if since is None or until is None:
            since, until = default_window(ctx.clock().date())
        window_label = since if since == until else f"{since}..{until}"
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        summary: dict[str, Any] = {"window": window_label, "proposals": []}
        if not take_lease(ctx, holder, ttl_s=6 * 3600):
            summary["skipped"] = "another nightly run holds the lease"
            _say(summary["skipped"])
            return summary
        try:
            done = window_acted(ctx, window_label)
            if done:
                summary["skipped"] = done
                _say(done)
                return summary
            canary = running_rollout(ctx)
            if canary:
                summary["skipped"] = canary
                _say(canary)
                return summary
            resume = unfinished(ctx, window_label)
            if resume is not None:
                summary["resumed"] = resume
                _carry_through(ctx, resume, summary, approver, dry_run)
                return summary
            summary["ingest"] = ingest_spans(ctx)
            observed = observe(ctx, since, until)
            summary["observed"] = observed["metrics"]
            summary["anomalies"] = spend_anomalies(ctx, since, until)
            levers, signal = levers_for_signals(levers, summary["anomalies"])
            if signal:
                summary["signals"] = [signal]
                _say(signal)
            if not observed["metrics"]:
                summary["skipped"] = f"no telemetry in {window_label}"
                return summary
            if ctx.settings.distillation.nightly:
                summary["distillation"] = distill(ctx, since, until)
            window = load_nightly_window(ctx, since, until)
            models = learn(window, seed)
            candidates = propose(window, ctx, models, levers, {"seed": seed, **(search or {})})
            summary["searched"] = {"evaluated": getattr(candidates, "evaluated", None),
                                   "trials": getattr(candidates, "trials", None),
                                   "ranked": len(candidates),
                                   "widen": getattr(candidates, "widen", None)}
            bought = exploration_bought(ctx, window, candidates)
            if bought:
                summary["exploration_bought"] = bought
            refused = proposed_hashes(ctx, window_label)
            choice = choose(candidates, refused, max_gated, min_saving)
            summary["skipped_candidates"] = choice.skipped
            active_estimate = getattr(candidates, "active_estimate", None)
            todo = [(c, predicted_record(c, active_estimate)) for c in choice.chosen]
            if not todo and ctx.settings.exploration.enabled:
                plan = plan_explore(ctx, window, candidates, since, until, min_saving)
                pick, why = choose_exploration(plan, refused)
                summary["exploration"] = {**plan.record(), "chosen": pick is not None,
                                          "why": why}
                if pick is not None:
                    todo.append((pick, predicted_record(pick, active_estimate,
                                                        exploration_budget(plan))))
            # One at a time: a proposal is recorded only when tonight will act on it, so no
            # proposal is left "proposed" behind a promotion or a canary (the next night
            # judges against the new policy anyway).
            for candidate, predicted in todo:
                pid = record_proposal(ctx, candidate, window_label, predicted)
                _carry_through(ctx, [pid], summary, approver, dry_run)
                last = summary["proposals"][-1]
                if "active_version" in last or "canary" in last:
                    break
            return summary
        finally:
            release_lease(ctx, holder)


def _carry_through(ctx: LoopContext, proposal_ids: list[str], summary: dict[str, Any],
                   approver: str | None, dry_run: bool) -> None:
    """Move each proposal along its lifecycle as far as tonight allows (sequencing only:
    every decision is ``next_step``); stop after the first promotion."""
    from controlplane.loop.nightly import canary_first, next_step

    for pid in proposal_ids:
        entry: dict[str, Any] = {"proposal_id": pid}
        summary["proposals"].append(entry)
        for _ in range(6):  # the lifecycle has fewer steps than this
            state, verdict = proposal_state(ctx, pid)
            step = next_step(state=state, gate_verdict=verdict, auto_approves=False,
                             dry_run=dry_run, non_interactive=approver is not None)
            if step.action == "gate":
                entry["gates"] = gate(ctx, pid, dry_run)
                if dry_run:
                    entry["stopped"] = "dry run"
                    break
            elif step.action == "reject":
                reject(ctx, pid, step.reason)
                entry["stopped"] = step.reason
                break
            elif step.action == "await_approval" and state == "gated":
                to_awaiting(ctx, pid, step.reason)
            elif step.action == "await_approval":
                entry["decision"] = decide(ctx, pid, approver).model_dump()
            elif step.action == "promote":
                rollout = ctx.settings.rollout
                first = canary_first(ctx.store.get_proposal(pid).lever, rollout.steps,
                                     rollout.exempt_levers)
                if first is None:
                    entry["active_version"] = promote(ctx, pid)
                else:
                    entry["canary"] = start_canary(ctx, pid, first)
                break
            else:
                entry["stopped"] = step.reason
                break
        entry["state"] = proposal_state(ctx, pid)[0]
        entry["report"] = write_report(ctx, pid)
        if "active_version" in entry or "canary" in entry:
            break  # one promotion (or canary) a night: the verify flow judges it next


@io_task
def verify_active(ctx: LoopContext, since: str | None, until: str | None) -> dict[str, Any]:
    from controlplane.loop.verify_adapter import verify_promoted

    return verify_promoted(ctx.state, ctx.store, ctx.fleet, since=since, until=until,
                           actor=VERIFY_ACTOR)


@flow(name="autopilot-verify", log_prints=True)
def verify(state_dir: str, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Realised against predicted for the active proposal; roll back on a regression."""
    with LoopContext.open(state_dir) as ctx:
        ingest_spans(ctx)
        result = verify_active(ctx, since, until)
        if result.get("proposal_id"):
            result["report"] = write_report(ctx, result["proposal_id"])
        return result


@io_task
def write_quarterly(ctx: LoopContext, quarter: str) -> dict[str, str]:
    from controlplane.reports import write_quarterly_report

    return write_quarterly_report(ctx.state, ctx.store, ctx.fleet, quarter)


@flow(name="autopilot-quarterly-report", log_prints=True)
def quarterly_report(state_dir: str, quarter: str | None = None) -> dict[str, str]:
    """The review of ``quarter``, by default the last whole quarter as of today in the
    schedule's time zone (the run on the first day of a quarter reports the one that
    ended)."""
    from zoneinfo import ZoneInfo

    with LoopContext.open(state_dir) as ctx:
        if quarter is None:
            quarter = quarter_that_ended(
                ctx.clock().astimezone(ZoneInfo(ctx.settings.timezone)))
        return write_quarterly(ctx, quarter)
