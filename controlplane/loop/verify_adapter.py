"""The verify flow's adapter: read the windows, apply ``verify_decision``, act on it."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["record_calibration", "task_outcomes", "verify_canary", "verify_promoted"]


def task_outcomes(tasks, attempts, calls, fleet, *, default_verifier_cost_usd: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per task of ``tasks``: spend, Green PR, first serve attempt passed."""
    from economics.costmodel import build_ledger, green_pr_mask

    if tasks.empty:
        empty = np.zeros(0)
        return empty, empty.astype(bool), empty.astype(bool)
    ledger = build_ledger(tasks, attempts, calls, fleet,
                          default_verifier_cost_usd=default_verifier_cost_usd)
    spend = ledger.task_spend()["spend_total"]
    rows = ledger.task_row
    keep = rows >= 0
    per_row = np.zeros(len(tasks))
    first = np.zeros(len(tasks), dtype=bool)
    per_row[rows[keep]] = spend[keep]
    first[rows[keep]] = ledger.task_first_serve_passed[keep]
    return per_row, green_pr_mask(tasks), first


def _window_days(label: str) -> tuple[str, str]:
    if ".." in label:
        since, until = label.split("..", 1)
        return since, until
    return label, label


def verify_promoted(state: Any, store: Any, fleet: Any, *, since: str | None, until: str | None,
                    actor: str) -> dict[str, Any]:
    """One look at the active proposal: VERIFIED, ROLL_BACK (done here) or KEEP_WATCHING.

    Baseline: the proposal's own window, tasks served under the baseline version. Candidate:
    ``[since, until]`` (default: everything after the baseline window), tasks served under
    the candidate version, so traffic from before the switch never counts for it.
    """
    from controlplane.loop.promotion import active_proposal
    from controlplane.loop.verification import VerifyOutcome
    from controlplane.views import read_metric_frames
    from store import ProposalState

    rollout = store.current_rollout()
    if rollout is not None:
        return verify_canary(state, store, fleet, rollout, since=since, until=until,
                             actor=actor)
    proposal = active_proposal(store)
    if proposal is None:
        return {"proposal_id": None, "outcome": "nothing to verify (no active proposal)"}
    settings = state.settings()
    b_since, b_until = _window_days(proposal.window)
    base = read_metric_frames(state, b_since, b_until)
    if since is None:
        since = _next_day(b_until)
    cand = read_metric_frames(state, since, until)

    look, decision = _look(store, proposal, settings, fleet, "verify.look",
                           baseline=served_by(base, proposal.baseline_version),
                           candidate=served_by(cand, proposal.candidate_version))
    store.audit_append(actor=actor, action="verify.look", subject=proposal.proposal_id,
                       payload=_finite({"outcome": decision.outcome.value,
                                        "message": decision.message, "stats": decision.stats,
                                        "candidate_window": [since, until]}))
    result = {"proposal_id": proposal.proposal_id, "outcome": decision.outcome.value,
              "message": decision.message, "stats": decision.stats}
    calibration = record_calibration(store, proposal, decision, look=look, since=since,
                                     until=until, actor=actor)
    if calibration is not None:
        result["calibration"] = calibration
    if decision.outcome == VerifyOutcome.ROLL_BACK:
        record = store.rollback(proposal.proposal_id, actor=actor, reason=decision.message)
        result["active_version"] = record.version
    elif decision.outcome == VerifyOutcome.VERIFIED:
        store.transition_proposal(proposal.proposal_id, ProposalState.VERIFIED, actor=actor,
                                  reason=decision.message)
    return result


def _look(store: Any, proposal: Any, settings: Any, fleet: Any, action: str, *,
          baseline: Any, candidate: Any) -> tuple[int, Any]:
    """The sequential test's next look (numbered by the audit entries ``action`` already
    holds for the proposal): per-task outcomes of the two (tasks, attempts, calls) frames,
    priced once, against the proposal's prediction."""
    from controlplane.loop.verification import verify_decision

    verifier = settings.default_verifier_cost_usd
    b = task_outcomes(*baseline, fleet, default_verifier_cost_usd=verifier)
    c = task_outcomes(*candidate, fleet, default_verifier_cost_usd=verifier)
    look = 1 + len(store.audit_entries(subject=proposal.proposal_id, action=action))
    decision = verify_decision(
        baseline_spend=b[0], baseline_green=b[1], baseline_first_pass=b[2],
        candidate_spend=c[0], candidate_green=c[1], candidate_first_pass=c[2],
        predicted_rel_delta=proposal.predicted.cost_per_green_pr_rel_delta, look=look,
        settings=settings.verify)
    return look, decision


def served_by(frames, version: int):
    """The tasks (and their attempts and calls) a policy version served."""
    tasks, attempts, calls = frames
    if tasks.empty:
        return tasks, attempts, calls
    ids = set(tasks.loc[tasks["policy_version"] == str(version), "task_id"])
    return (tasks[tasks["task_id"].isin(ids)], attempts[attempts["task_id"].isin(ids)],
            calls[calls["task_id"].isin(ids)])


def verify_canary(state: Any, store: Any, fleet: Any, rollout: Any, *, since: str | None,
                  until: str | None, actor: str) -> dict[str, Any]:
    """One look at a running canary: the canary's tasks against the control's on the same
    days (``[since, until]``, default: from the day the rollout started), the same
    sequential test as verify; then abort, hold, advance or promote (``rollout_step``)."""
    from controlplane.loop.verification import rollout_step
    from controlplane.views import read_metric_frames

    proposal = store.get_proposal(rollout.proposal_id)
    settings = state.settings()
    if since is None:
        since = rollout.started_at.date().isoformat()
    frames = read_metric_frames(state, since, until)
    look, decision = _look(store, proposal, settings, fleet, "rollout.look",
                           baseline=served_by(frames, rollout.baseline_version),
                           candidate=served_by(frames, rollout.candidate_version))
    step = rollout_step(decision, share=rollout.share, steps=tuple(settings.rollout.steps),
                        min_tasks=settings.rollout.min_tasks, margin=settings.verify.margin)
    store.audit_append(actor=actor, action="rollout.look", subject=proposal.proposal_id,
                       payload=_finite({"outcome": decision.outcome.value,
                                        "action": step.action, "share": rollout.share,
                                        "step": rollout.step, "message": decision.message,
                                        "stats": decision.stats, "window": [since, until]}))
    result: dict[str, Any] = {"proposal_id": proposal.proposal_id, "canary": True,
                              "share": rollout.share, "step": rollout.step,
                              "outcome": step.action, "message": step.reason,
                              "stats": decision.stats}
    calibration = record_calibration(store, proposal, decision, look=look, since=since,
                                     until=until, actor=actor)
    if calibration is not None:
        result["calibration"] = calibration
    if step.action == "abort":
        store.abort_rollout(proposal.proposal_id, actor=actor, reason=step.reason)
    elif step.action == "advance":
        store.advance_rollout(proposal.proposal_id, share=step.share, actor=actor,
                              reason=step.reason)
    elif step.action == "complete":
        record = store.complete_rollout(proposal.proposal_id, actor=actor, reason=step.reason)
        result["active_version"] = record.version
    result["share_after"] = step.share if step.action != "abort" else 0.0
    return result


def record_calibration(store: Any, proposal: Any, decision: Any, *, look: int, since: str,
                       until: str | None, actor: str) -> dict[str, Any] | None:
    """Write this look to the calibration record: the proposal's predicted change of cost per
    Green PR against the realised one. Nothing when either side has no figure yet.

    The row carries the interval inflation the nightly applied to the proposal's lever when
    it proposed (the factor the record gave then), so the record reads on the estimator's
    own scale (``controlplane.loop.calibration``)."""
    from controlplane.loop.calibration import factor_for, inflation_factors

    stats = decision.stats
    realised = stats.get("rel_delta")
    if realised is None or proposal.predicted.cost_per_green_pr_rel_delta is None:
        return None
    if not np.isfinite(realised):
        return None
    widen = factor_for(inflation_factors(store.calibration_records(),
                                         as_of=proposal.created_at), proposal.lever)
    ci = stats.get("rel_delta_ci")
    record = store.record_calibration(
        proposal.proposal_id, look=look, realised=float(realised),
        realised_ci=None if ci is None else (float(ci[0]), float(ci[1])),
        realised_window=f"{since}..{until or ''}", outcome=decision.outcome.value,
        baseline_tasks=int(stats.get("baseline_tasks", 0)),
        candidate_tasks=int(stats.get("candidate_tasks", 0)), widen=widen, actor=actor)
    return _finite(record.as_dict())


def _finite(value: Any) -> Any:
    """JSON for the audit log: NaN and infinities become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _next_day(day: str) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()
