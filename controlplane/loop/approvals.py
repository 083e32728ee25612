"""Who may decide a proposal, and when a rule may decide it for them.

Pure rules over records; the store records what was decided and by whom. A platform owner
named in ``autopilot.yaml`` may approve or reject; the proposal's author never may (four
eyes). Auto-approval is off unless a rule in ``autopilot.yaml`` names the lever, and it
only ever applies to a proposal whose gates all PASSED and whose risk is within the rule's
bound.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from contracts.documents import Strict
from contracts.errors import PermanentError
from contracts.prediction import Prediction
from controlplane.settings import AutoApprovalRule

__all__ = [
    "RISK_LEVELS",
    "Approval",
    "ApprovalPlan",
    "AutoApprovalRule",
    "AutoDecision",
    "NotAuthorised",
    "authorise",
    "auto_decision",
    "decide_proposal",
    "normalise_identity",
    "plan_approval",
]

RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high")


class NotAuthorised(PermanentError):
    """The identity may not decide this proposal; the message says why."""


@dataclass(frozen=True)
class AutoDecision:
    approve: bool
    rule: str | None
    reason: str


def normalise_identity(name: str | None) -> str:
    """One spelling per person: Unicode NFKC, surrounding whitespace removed, case folded.
    ``" Alice"``, ``"ALICE"`` and ``"ａｌｉｃｅ"`` (full width) are all ``"alice"``, so a
    spelling can neither slip past the four-eyes check nor be recorded as someone else."""
    return unicodedata.normalize("NFKC", name or "").strip().casefold()


def authorise(approver: str, *, author: str, owners: Sequence[str]) -> str:
    """Raise ``NotAuthorised`` unless ``approver`` is a platform owner other than the author.

    Identities are compared normalised (``normalise_identity``) and the normalised one is
    returned: record that, never the raw input, so the check and the record agree."""
    who = normalise_identity(approver)
    if not who:
        raise NotAuthorised("an approver identity is required (--as NAME)")
    if who not in {normalise_identity(o) for o in owners}:
        listed = ", ".join(owners) if owners else "none configured"
        raise NotAuthorised(
            f"{who!r} is not a platform owner (platform_owners in autopilot.yaml: {listed})")
    if who == normalise_identity(author):
        raise NotAuthorised(f"{who!r} authored this proposal and cannot approve it (four eyes)")
    return who


def auto_decision(*, lever: str, gate_verdict: str | None, predicted: Prediction,
                  rules: Sequence[AutoApprovalRule]) -> AutoDecision:
    """Whether a rule approves this proposal now. Never approves a non-PASSED gate; a
    prediction without a risk counts as high risk, one without a saving as no saving."""
    if gate_verdict != "PASSED":
        return AutoDecision(False, None, f"gate verdict {gate_verdict or 'none'}: a person decides")
    if lever == "exploration":
        # Opt-in by a rule naming the lever itself ("*" does not cover spending money on
        # evidence); within the budget it is safe by construction (shadow outputs never
        # reach callers), so the saving and FPY bounds of a rule do not apply.
        if not any(r.lever == "exploration" for r in rules):
            return AutoDecision(False, None, "no auto-approval rule for lever 'exploration'")
        budget = predicted.exploration
        if budget is None:
            return AutoDecision(False, None, "exploration without a priced budget: a person "
                                "decides")
        if not budget.within_budget:
            return AutoDecision(False, None, f"exploration ${budget.usd_per_day:.4f}/day > "
                                f"budget ${budget.budget_usd_per_day:.4f}/day")
        return AutoDecision(True, "auto_approve[exploration]",
                            f"auto_approve[exploration]: ${budget.usd_per_day:.4f}/day within "
                            f"the ${budget.budget_usd_per_day:.4f}/day budget")
    matching = [r for r in rules if r.lever in (lever, "*")]
    if not matching:
        return AutoDecision(False, None, f"no auto-approval rule for lever {lever!r}")
    risk = predicted.risk
    risk_rank = RISK_LEVELS.index(risk)
    saving = -(predicted.cost_per_green_pr_rel_delta or 0.0)
    fpy_drop = -(predicted.fpy_delta or 0.0)
    refusals = []
    for rule in matching:
        name = f"auto_approve[{rule.lever}]"
        if risk_rank > RISK_LEVELS.index(rule.max_risk):
            refusals.append(f"{name}: risk {risk} > max {rule.max_risk}")
        elif saving < rule.min_predicted_saving:
            refusals.append(f"{name}: predicted saving {saving:.1%} < min "
                            f"{rule.min_predicted_saving:.1%}")
        elif fpy_drop > rule.max_fpy_drop:
            refusals.append(f"{name}: predicted FPY drop {fpy_drop:.3f} > max "
                            f"{rule.max_fpy_drop:.3f}")
        else:
            return AutoDecision(True, name, f"{name}: risk {risk} <= {rule.max_risk}, "
                                f"predicted saving {saving:.1%}, FPY change {-fpy_drop:+.3f}")
    return AutoDecision(False, None, "; ".join(refusals))


class Approval(Strict):
    """How a proposal was decided tonight, and by whom."""

    approve: bool
    by: str
    via: Literal["recorded", "auto-approval", "named approver", "cli", "prefect-ui",
                 "timeout"]
    reason: str


@dataclass(frozen=True)
class ApprovalPlan:
    """What deciding a proposal takes: an ``approval`` to record (``record``), one already
    on record (``record`` False), or nobody yet (``approval`` None: ask a platform owner)."""

    approval: Approval | None
    record: bool = False


def plan_approval(proposal: Any, earlier: Any, *, approver: str | None,
                  rules: Sequence[AutoApprovalRule], owners: Sequence[str]) -> ApprovalPlan:
    """The decision step, pure: a decision on record stands; else an auto-approval rule;
    else the named approver (authorised like anyone: a platform owner, not the author);
    else a platform owner must be asked. Raises ``NotAuthorised`` for a refused approver."""
    if earlier is not None:
        return ApprovalPlan(Approval(approve=earlier.decision.value == "approve",
                                     by=earlier.approver, via="recorded",
                                     reason=earlier.reason))
    verdict = proposal.gate_verdict.value if proposal.gate_verdict else None
    auto = auto_decision(lever=proposal.lever, gate_verdict=verdict,
                         predicted=proposal.predicted, rules=rules)
    if auto.approve:
        return ApprovalPlan(Approval(approve=True, by=auto.rule or "auto", via="auto-approval",
                                     reason=auto.reason), record=True)
    if approver:
        who = authorise(approver, author=proposal.created_by, owners=owners)
        return ApprovalPlan(Approval(approve=True, by=who, via="named approver",
                                     reason=f"approved by {who} (non-interactive run)"),
                            record=True)
    return ApprovalPlan(None)


def decide_proposal(store: Any, proposal: Any, *, approver: str | None, settings: Any,
                    ask_owner: Callable[[Any], Approval]) -> Approval:
    """Act on ``plan_approval``: record the decision it makes, or ask a platform owner."""
    plan = plan_approval(proposal, store.get_approval(proposal.proposal_id), approver=approver,
                         rules=settings.auto_approve, owners=settings.platform_owners)
    if plan.approval is None:
        return ask_owner(proposal)
    if plan.record:
        store.record_decision(proposal.proposal_id, approver=plan.approval.by,
                              decision="approve" if plan.approval.approve else "reject",
                              reason=plan.approval.reason)
    return plan.approval

