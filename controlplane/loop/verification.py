"""Did a promoted policy deliver? Realised against baseline and prediction, night by night.

The realised cost per Green PR is a ratio (spend over Green PRs) of per-task sums, so its
variance comes from the delta method on per-task contributions; the candidate's window is
compared with the baseline's (the window the proposal was judged on). Each nightly look
spends a share of the error budget (alpha * 2**-look, which sums to at most alpha over any
number of looks), so looking every night does not inflate false rollbacks.

Decisions: ROLL_BACK when the candidate is significantly worse than the baseline beyond
the margin on cost per Green PR, or significantly worse on FPY; VERIFIED when enough tasks
were seen and the regression is ruled out; otherwise KEEP_WATCHING (and after
``max_looks`` an undecided change is VERIFIED with the reason saying it was inconclusive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np

from controlplane.settings import VerifySettings

__all__ = [
    "RatioEstimate",
    "RolloutStep",
    "VerifyDecision",
    "VerifyOutcome",
    "VerifySettings",
    "ratio_estimate",
    "rollout_step",
    "verify_decision",
]


class VerifyOutcome(StrEnum):
    KEEP_WATCHING = "keep_watching"
    VERIFIED = "verified"
    ROLL_BACK = "roll_back"


@dataclass(frozen=True)
class RatioEstimate:
    """Spend / Green PRs over a window, with the delta-method variance of the ratio."""

    value: float | None
    variance: float | None
    tasks: int
    green: int
    spend: float


@dataclass(frozen=True)
class VerifyDecision:
    outcome: VerifyOutcome
    message: str
    stats: dict[str, Any] = field(default_factory=dict)


def ratio_estimate(spend: np.ndarray, green: np.ndarray) -> RatioEstimate:
    spend = np.asarray(spend, dtype=np.float64)
    green = np.asarray(green, dtype=np.float64)
    n = len(spend)
    total_green = float(green.sum())
    total_spend = float(spend.sum())
    if n < 2 or total_green <= 0:
        return RatioEstimate(None, None, n, int(total_green), total_spend)
    ratio = total_spend / total_green
    z = (spend - ratio * green) / green.mean()
    return RatioEstimate(ratio, float(z.var(ddof=1) / n), n, int(total_green), total_spend)


def _proportion(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    n = max(len(x), 1)
    p = float(x.mean()) if len(x) else float("nan")
    return p, p * (1 - p) / n


def verify_decision(*, baseline_spend: np.ndarray, baseline_green: np.ndarray,
                    baseline_first_pass: np.ndarray, candidate_spend: np.ndarray,
                    candidate_green: np.ndarray, candidate_first_pass: np.ndarray,
                    predicted_rel_delta: float | None, look: int,
                    settings: VerifySettings = VerifySettings()) -> VerifyDecision:
    """One nightly look (``look`` = 1, 2, ...) at a promoted policy's realised effect."""
    base = ratio_estimate(baseline_spend, baseline_green)
    cand = ratio_estimate(candidate_spend, candidate_green)
    alpha_k = settings.alpha * 2.0 ** (-max(look, 1))
    z = NormalDist().inv_cdf(1 - alpha_k / 2)
    stats: dict[str, Any] = {"look": look, "alpha_spent": alpha_k, "z": z,
                             "baseline_tasks": base.tasks, "candidate_tasks": cand.tasks,
                             "predicted_rel_delta": predicted_rel_delta}
    if base.value is None or cand.value is None:
        which = "baseline" if base.value is None else "candidate"
        msg = f"{which} window has no Green PRs yet ({base.tasks} / {cand.tasks} tasks)"
        if cand.value is None and cand.tasks >= settings.min_tasks:
            return VerifyDecision(VerifyOutcome.ROLL_BACK,
                                  f"candidate produced no Green PR in {cand.tasks} tasks", stats)
        return VerifyDecision(VerifyOutcome.KEEP_WATCHING, msg, stats)

    # Relative change of cost per Green PR, by the delta method on the log ratio.
    rel = cand.value / base.value - 1.0
    se_log = math.sqrt(cand.variance / cand.value**2 + base.variance / base.value**2)
    lo = math.exp(math.log1p(rel) - z * se_log) - 1.0
    hi = math.exp(math.log1p(rel) + z * se_log) - 1.0
    p_base, v_base = _proportion(baseline_first_pass)
    p_cand, v_cand = _proportion(candidate_first_pass)
    fpy_delta = p_cand - p_base
    fpy_se = math.sqrt(v_base + v_cand)
    fpy_lo, fpy_hi = fpy_delta - z * fpy_se, fpy_delta + z * fpy_se
    g_base, gv_base = _proportion(baseline_green)
    g_cand, gv_cand = _proportion(candidate_green)
    # Relative change of the Green PR rate (delta method), judged against green_margin.
    green_rel = g_cand / g_base - 1.0 if g_base > 0 else 0.0
    green_se = (math.sqrt(gv_cand / g_base**2 + gv_base * g_cand**2 / g_base**4)
                if g_base > 0 else 0.0)
    green_lo, green_hi = green_rel - z * green_se, green_rel + z * green_se
    stats.update({
        "baseline_cost_per_green_pr": base.value, "candidate_cost_per_green_pr": cand.value,
        "rel_delta": rel, "rel_delta_ci": [lo, hi], "baseline_fpy": p_base,
        "candidate_fpy": p_cand, "fpy_delta": fpy_delta, "fpy_delta_ci": [fpy_lo, fpy_hi],
        "baseline_green_rate": g_base, "candidate_green_rate": g_cand,
        "green_rel_delta": green_rel, "green_rel_delta_ci": [green_lo, green_hi],
    })
    predicted = ("" if predicted_rel_delta is None
                 else f"; predicted {predicted_rel_delta:+.1%}")
    summary = (f"realised ${cand.value:.5f} vs baseline ${base.value:.5f} per Green PR "
               f"({rel:+.1%}, CI {lo:+.1%}..{hi:+.1%} at look {look}){predicted}; "
               f"FPY {p_cand:.3f} vs {p_base:.3f} ({fpy_delta:+.3f}, CI {fpy_lo:+.3f}..{fpy_hi:+.3f})")
    if lo > settings.margin:
        return VerifyDecision(VerifyOutcome.ROLL_BACK,
                              f"regression: cost per Green PR CI lower bound {lo:+.1%} > margin "
                              f"+{settings.margin:.0%}. {summary}", stats)
    if green_hi < -settings.green_margin:
        return VerifyDecision(VerifyOutcome.ROLL_BACK,
                              f"regression: Green PR rate CI upper bound {green_hi:+.1%} < "
                              f"-{settings.green_margin:.0%}. {summary}", stats)
    fpy_margin = settings.fpy_margin
    if fpy_margin is not None and fpy_hi < -fpy_margin:
        return VerifyDecision(VerifyOutcome.ROLL_BACK,
                              f"regression: FPY CI upper bound {fpy_hi:+.3f} < "
                              f"-{fpy_margin:.3f}. {summary}", stats)
    enough = min(base.tasks, cand.tasks) >= settings.min_tasks
    fpy_ok = fpy_margin is None or fpy_lo >= -fpy_margin
    if enough and hi <= settings.margin and green_lo >= -settings.green_margin and fpy_ok:
        return VerifyDecision(VerifyOutcome.VERIFIED, f"non-inferior confirmed. {summary}", stats)
    if look >= settings.max_looks:
        return VerifyDecision(VerifyOutcome.VERIFIED,
                              f"inconclusive after {look} looks; kept (no significant "
                              f"regression). {summary}", stats)
    need = "" if enough else f" (need {settings.min_tasks} tasks per window)"
    return VerifyDecision(VerifyOutcome.KEEP_WATCHING, f"undecided{need}. {summary}", stats)


@dataclass(frozen=True)
class RolloutStep:
    action: str  # "abort", "advance", "complete", "hold"
    share: float  # the share after the action
    reason: str


def rollout_step(decision: VerifyDecision, *, share: float, steps: tuple[float, ...],
                 min_tasks: int, margin: float = 0.05) -> RolloutStep:
    """What one look at a canary (canary against control, the same days) does to it.

    The canary analysis of Flagger and Argo Rollouts: a significant regression (the
    sequential test's ROLL_BACK: cost per Green PR, Green rate, or FPY when an owner set a
    margin) stops it, as does running out of looks undecided; once both arms have
    ``min_tasks`` tasks, no regression is shown and the cost interval's upper end is within
    ``margin`` (the canary is not shown costlier), it moves to the next step of ``steps``
    (the last, 100%, is the promotion, after which verify keeps judging it on all traffic);
    otherwise it holds at ``share``.
    """
    if decision.outcome == VerifyOutcome.ROLL_BACK:
        return RolloutStep("abort", share, f"canary stopped at {share:.0%}: {decision.message}")
    stats = decision.stats
    tasks = min(stats.get("baseline_tasks", 0), stats.get("candidate_tasks", 0))
    out_of_looks = decision.message.startswith("inconclusive")
    if decision.outcome == VerifyOutcome.VERIFIED and out_of_looks:
        return RolloutStep("abort", share, f"canary stopped at {share:.0%}: still undecided "
                           f"when its looks ran out. {decision.message}")
    high = (stats.get("rel_delta_ci") or [None, None])[1]
    if tasks < min_tasks or high is None or high > margin:
        if tasks < min_tasks:
            need = f"{tasks} tasks in the smaller arm < {min_tasks}"
        elif high is None:
            need = "no Green PR yet in an arm"
        else:
            need = f"its cost interval still admits more than +{margin:.0%}"
        return RolloutStep("hold", share, f"holding at {share:.0%}: {need}. "
                           f"{decision.message}")
    later = [s for s in steps if s > share + 1e-9]
    if not later or later[0] >= 1.0:
        return RolloutStep("complete", 1.0, f"canary held at {share:.0%}: promoted to 100%. "
                           f"{decision.message}")
    return RolloutStep("advance", later[0], f"canary held at {share:.0%}: advancing to "
                       f"{later[0]:.0%}. {decision.message}")
