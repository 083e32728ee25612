"""Pure decisions of the nightly controller: what to gate, what to record, what to do next.

Each function takes observed state (candidates from the search, proposals already in the
store, gate verdicts, approvals) and returns a decision; the Prefect flow in
``controlplane.flows`` only sequences them with the adapters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from contracts.prediction import ExplorationBudget, Prediction

__all__ = [
    "GatingChoice",
    "NextStep",
    "canary_first",
    "choose_exploration",
    "choose_for_gating",
    "default_window",
    "exploration_budget",
    "levers_for_signals",
    "next_step",
    "not_again",
    "predicted_record",
    "rollout_blocks",
    "unfinished_proposals",
    "window_already_acted",
    "window_days",
]


@dataclass(frozen=True)
class GatingChoice:
    chosen: list[Any]
    skipped: list[tuple[str, str]]  # (policy hash prefix, reason)


def default_window(today: date) -> tuple[str, str]:
    """The nightly run judges yesterday (UTC): the last complete day of telemetry."""
    day = (today - timedelta(days=1)).isoformat()
    return day, day


def levers_for_signals(levers: Any, anomalies: Mapping[str, Any] | None
                       ) -> tuple[Any, str | None]:
    """The levers tonight's search covers, given the window's spend anomalies: a family
    whose spend ran away (a family-scope anomaly) brings the guardrails lever into the search
    (per-family caps are what stops a runaway), with the reason to report; "all" already
    covers it."""
    by_scope = (anomalies or {}).get("by_scope") or {}
    runaway = int(by_scope.get("family", 0))
    if not runaway or levers == "all" or (not isinstance(levers, str) and (
            "all" in levers or "guardrails" in levers)):
        return levers, None
    named = [levers] if isinstance(levers, str) else list(levers)
    return [*named, "guardrails"], (f"{runaway} family spend anomal"
                                    f"{'y' if runaway == 1 else 'ies'} in the window: the "
                                    "guardrails lever (per-task caps) is searched tonight")


def window_days(since: str, until: str) -> int:
    """Days a window spans, both ends included (a budget per day divides by it)."""
    return (date.fromisoformat(until) - date.fromisoformat(since)).days + 1


def not_again(proposals: Iterable[Any], *, window_label: str, active_version: int,
              active_hash: str) -> dict[str, str]:
    """Candidate hashes the nightly must not propose tonight, each with why.

    The same spec already proposed against the active version for this window (a rerun never
    duplicates a proposal), and any spec that was rejected or rolled back against the same
    baseline content (the applied-vs-promoted record of Flagger): the nightly never retries
    a bad idea, however many nights it sees. Against another baseline a spec may come back,
    since what it changes is then different."""
    out: dict[str, str] = {}
    for p in proposals:
        state = getattr(p.state, "value", p.state)
        if p.baseline_hash == active_hash and state in ("rejected", "rolled_back"):
            out[p.candidate_hash] = f"{state} against this baseline ({p.proposal_id})"
        elif p.window == window_label and p.baseline_version == active_version:
            out.setdefault(p.candidate_hash, "already proposed")
    return out


def canary_first(lever: str, steps: Sequence[float], exempt: Iterable[str]) -> float | None:
    """The share an approved change first serves (progressive delivery), or None to
    promote it at once (its lever is exempt, or the steps are just ``[1.0]``)."""
    if lever in set(exempt) or not steps or steps[0] >= 1.0:
        return None
    return float(steps[0])


def rollout_blocks(rollout: Any | None) -> str | None:
    """Why the nightly proposes nothing tonight, or None: while a canary runs, the active
    policy is only part of the traffic and the next change waits for the canary's end."""
    if rollout is None:
        return None
    return (f"the canary of {rollout.proposal_id} (v{rollout.candidate_version}) serves "
            f"{rollout.share:.0%} of new tasks: the verify flow advances it; nothing new "
            "is proposed until it ends")


def window_already_acted(proposals: Iterable[Any], window_label: str) -> str | None:
    """Why a rerun over ``window_label`` must not act again, or None.

    A window whose proposal was promoted (active, verified or rolled back since) has had
    its night: judging it again against the new active policy would promote twice on the
    same evidence.
    """
    for p in proposals:
        state = getattr(p.state, "value", p.state)
        if p.window == window_label and state in ("active", "verified", "rolled_back"):
            return f"window {window_label} already promoted {p.proposal_id} ({state})"
    return None


def unfinished_proposals(proposals: Iterable[Any], window_label: str,
                         active_version: int) -> list[Any] | None:
    """A rerun over a window that was already judged against the active policy resumes
    that night's proposals instead of searching again (so it never proposes more); None
    when the window has not been judged against the active policy yet."""
    mine = [p for p in proposals
            if p.window == window_label and p.baseline_version == active_version]
    if not mine:
        return None
    return [p for p in mine
            if getattr(p.state, "value", p.state) in ("proposed", "gated", "awaiting_approval",
                                                      "approved")]


def _rel_delta(candidate: Any) -> tuple[float, float, float]:
    d = candidate.deltas.cost_per_green_pr
    return d.point, d.low, d.high


def choose_for_gating(candidates: Sequence[Any], *,
                      proposed_hashes: Iterable[str] | Mapping[str, str],
                      max_gated: int = 2, min_saving: float = 0.02) -> GatingChoice:
    """The best few candidates worth the gates' time, best first.

    A candidate is gated when it is feasible (Green PRs, and FPY where a margin is set,
    non-inferior), its predicted relative change of cost per Green PR is a saving of at least
    ``min_saving`` with the interval's upper end below zero (never confidently-better on
    thin data), its risk is not high, and no proposal already exists for the same spec
    (a rerun over the same window never duplicates a proposal) and it was never rejected or
    rolled back against this baseline (``proposed_hashes`` maps such hashes to why, see
    ``not_again``).
    """
    refused = (dict(proposed_hashes) if isinstance(proposed_hashes, Mapping)
               else dict.fromkeys(proposed_hashes, "already proposed"))
    seen = set(refused)
    chosen: list[Any] = []
    skipped: list[tuple[str, str]] = []
    for c in candidates:
        h = c.policy.content_hash
        point, _low, high = _rel_delta(c)
        reason = None
        if h in seen:
            reason = refused.get(h, "already proposed")
        elif not c.feasible:
            reason = "not non-inferior: " + ("; ".join(getattr(c, "reasons", ())) or "infeasible")
        elif point > -min_saving:
            reason = f"predicted change {point:+.1%} is not a saving of {min_saving:.0%}"
        elif high >= 0:
            reason = f"interval upper end {high:+.1%} >= 0: not confidently cheaper"
        elif c.risk == "high":
            reason = "risk high (thin support for the tiers it uses)"
        elif len(chosen) >= max_gated:
            reason = f"gating budget of {max_gated} used"
        if reason:
            skipped.append((h[:12], reason))
            continue
        seen.add(h)
        chosen.append(c)
    return GatingChoice(chosen, skipped)


def choose_exploration(plan: Any, refused: Mapping[str, str]) -> tuple[Any | None, str]:
    """The exploration change to propose tonight, or None and why not. Asked only when no
    saving candidate was chosen for the gates (one change a night; a saving goes first)."""
    if plan is None:
        return None, "exploration is off"
    if plan.candidate is None:
        return None, plan.reason
    h = plan.candidate.policy.content_hash
    if h in refused:
        return None, f"exploration {h[:12]}: {refused[h]}"
    return plan.candidate, plan.reason


def exploration_budget(plan: Any) -> ExplorationBudget:
    return ExplorationBudget(tiers=list(plan.tiers), families=list(plan.families),
                             rate=plan.rate, usd_per_day=max(plan.usd_per_day, 0.0),
                             budget_usd_per_day=plan.budget_usd_per_day, reason=plan.reason,
                             blocked=plan.blocked)


def predicted_record(candidate: Any, active_estimate: Any | None = None,
                     exploration: ExplorationBudget | None = None) -> Prediction:
    """What the proposal records as its prediction (read by approvals, reports, verify)."""
    e, d = candidate.estimate, candidate.deltas
    return Prediction(
        cost_per_green_pr_rel_delta=d.cost_per_green_pr.point,
        cost_per_green_pr_rel_delta_ci=(d.cost_per_green_pr.low, d.cost_per_green_pr.high),
        fpy_delta=d.fpy.point,
        fpy_delta_ci=(d.fpy.low, d.fpy.high),
        green_prs_rel_delta=d.green_prs.point,
        green_prs_rel_delta_ci=(d.green_prs.low, d.green_prs.high),
        cost_per_green_pr=e.cost_per_green_pr.point,
        cost_per_green_pr_ci=(e.cost_per_green_pr.low, e.cost_per_green_pr.high),
        fpy=e.fpy.point,
        support=e.support,
        risk=candidate.risk,
        lever=candidate.lever,
        level=e.level,
        active_cost_per_green_pr=(None if active_estimate is None
                                  else active_estimate.cost_per_green_pr.point),
        active_fpy=None if active_estimate is None else active_estimate.fpy.point,
        exploration=exploration,
    )


@dataclass(frozen=True)
class NextStep:
    # "gate", "reject", "await_approval", "auto_approve", "promote", "report",
    # "stop"
    action: str
    reason: str


def next_step(*, state: str, gate_verdict: str | None, auto_approves: bool,
              dry_run: bool = False, non_interactive: bool = False) -> NextStep:
    """Where a proposal goes next in the nightly run, from its lifecycle state."""
    if state == "proposed":
        return NextStep("gate", "new proposal")
    if state == "gated":
        if gate_verdict in ("FAILED", "ERROR"):
            return NextStep("reject", f"gates {gate_verdict}: rejected, never promoted")
        if gate_verdict != "PASSED":
            return NextStep("await_approval", f"gates {gate_verdict}: a platform owner "
                            "decides (no rule approves it)")
        return NextStep("await_approval", "gates PASSED")
    if state == "awaiting_approval":
        if dry_run:
            return NextStep("stop", "dry run: recorded, not promoted")
        if non_interactive and gate_verdict != "PASSED":
            # A named approver of an unattended run approves what passed its gates; a
            # verdict short of PASSED waits for a platform owner's own decision.
            return NextStep("stop", f"gates {gate_verdict}: left for a platform owner "
                            "(`autopilot proposals approve|reject`); an unattended run "
                            "never approves it")
        if auto_approves:
            return NextStep("auto_approve", "an auto-approval rule applies")
        return NextStep("await_approval", "a platform owner decides")
    if state == "approved":
        return NextStep("promote", "approved")
    if state == "canary":
        return NextStep("report", "canary: the verify flow advances, promotes or stops it")
    if state in ("active", "verified", "rolled_back", "rejected"):
        return NextStep("report", f"{state}: nothing more to do tonight")
    return NextStep("stop", f"unknown state {state!r}")
