"""Who may decide a proposal, and when a rule may decide it for them.

Pure rules over records; the store records what was decided and by whom. A platform owner
named in ``autopilot.yaml`` may approve or reject; the proposal's author never may (four
eyes). Auto-approval is off unless a rule in ``autopilot.yaml`` names the lever, and it
only ever applies to a proposal whose gates all PASSED and whose risk is within the rule's
bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.errors import PermanentError
from controlplane.settings import AutoApprovalRule

__all__ = [
    "RISK_LEVELS",
    "AutoApprovalRule",
    "AutoDecision",
    "NotAuthorised",
    "authorise",
    "auto_decision",
]

RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high")


class NotAuthorised(PermanentError):
    """The identity may not decide this proposal; the message says why."""


@dataclass(frozen=True)
class AutoDecision:
    approve: bool
    rule: str | None
    reason: str


def authorise(approver: str, *, author: str, owners: Sequence[str]) -> None:
    """Raise ``NotAuthorised`` unless ``approver`` is a platform owner other than the author."""
    who = (approver or "").strip()
    if not who:
        raise NotAuthorised("an approver identity is required (--as NAME)")
    if who not in owners:
        listed = ", ".join(owners) if owners else "none configured"
        raise NotAuthorised(
            f"{who!r} is not a platform owner (platform_owners in autopilot.yaml: {listed})")
    if who == author:
        raise NotAuthorised(f"{who!r} authored this proposal and cannot approve it (four eyes)")


def _number(predicted: Mapping[str, Any], key: str) -> float | None:
    value = predicted.get(key)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def auto_decision(*, lever: str, gate_verdict: str | None, predicted: Mapping[str, Any],
                  rules: Sequence[AutoApprovalRule]) -> AutoDecision:
    """Whether a rule approves this proposal now. Never approves a non-PASSED gate.

    ``predicted`` carries ``risk`` ("low"/"medium"/"high"), ``cost_per_green_pr_rel_delta``
    (negative is a saving) and ``fpy_delta`` as the nightly flow records them.
    """
    if gate_verdict != "PASSED":
        return AutoDecision(False, None, f"gate verdict {gate_verdict or 'none'}: a person decides")
    matching = [r for r in rules if r.lever in (lever, "*")]
    if not matching:
        return AutoDecision(False, None, f"no auto-approval rule for lever {lever!r}")
    risk = str(predicted.get("risk", "high"))
    risk_rank = RISK_LEVELS.index(risk) if risk in RISK_LEVELS else len(RISK_LEVELS)
    saving = -(_number(predicted, "cost_per_green_pr_rel_delta") or 0.0)
    fpy_drop = -(_number(predicted, "fpy_delta") or 0.0)
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
