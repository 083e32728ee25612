"""Exploration as a change with a dollar budget: buy the evidence a promising candidate lacks.

From the naive start (everything on the top tier) the window says little of the cheap
tiers, so every cheap-first routing has an interval that crosses the Green-PR margin and
cannot be promoted honestly. Evidence about a cheap tier is nearly free: a shadow attempt
runs the task's first attempt again on another tier beside the served one, its output never
reaches the caller, and its verdict is joint evidence (``experiments.window``): served on
L with a shadow on S tells what S did on that very task, so the cascade S -> L is observed.

``plan_exploration`` is the decision, pure over the search's result: which candidates are
*blocked* (a predicted saving of at least ``min_saving`` whose interval or support keeps it
from the gates), which tiers and families block them (the tiers their routing uses that
the active policy does not start on, in the families whose routing they change), and the
shadow rate that spends at most ``budget_share`` of the window's spend on those shadows.
The change keeps everything else of the active policy: the gates still run (they see the
same routing, since gate traffic never shadows), and the prediction prices the shadows as
evaluation spend through the same replay as any candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.estimator import compare, estimate
from experiments.replay import replay_policy

__all__ = ["AUTHOR", "ExplorationPlan", "blocked_candidates", "evidence_bought",
           "exploration_targets", "plan_exploration", "shadow_share_per_tier",
           "variant_targets"]

AUTHOR = "autopilot-exploration"
# A shadow rate below this buys too little evidence in a night to be worth a change.
MIN_RATE = 0.05


@dataclass
class ExplorationPlan:
    """An exploration change and what it is for (``candidate`` is a ``search.Candidate``
    with lever ``exploration``; None when ``reason`` says why there is none)."""

    candidate: Any | None
    reason: str
    tiers: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    rate: float = 0.0
    usd_per_day: float = 0.0
    budget_usd_per_day: float = 0.0
    blocked: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"reason": self.reason, "tiers": list(self.tiers),
                "families": list(self.families), "rate": self.rate,
                "usd_per_day": self.usd_per_day, "budget_usd_per_day": self.budget_usd_per_day,
                "blocked": self.blocked,
                "policy_hash": None if self.candidate is None
                else self.candidate.policy.content_hash}


def blocked_candidates(candidates: list[Any], min_saving: float) -> list[Any]:
    """Candidates whose point estimate saves at least ``min_saving`` but that the gates
    will not see: infeasible on their interval, or high risk (thin support)."""
    out = []
    for c in candidates:
        d = c.deltas.cost_per_green_pr
        if not np.isfinite(d.point) or d.point > -min_saving:
            continue
        if not c.feasible or c.risk == "high" or not d.high < 0:
            out.append(c)
    return out


def exploration_targets(active: Any, blocked: list[Any], families: list[str]
                        ) -> tuple[list[str], list[str]]:
    """(tiers, families) the blocked candidates need evidence on: per family whose routing
    a candidate changes, the tiers of its escalation order that the active policy never
    serves that family on, and its first tier when the active policy does not start there.
    A tier the active plan already serves shows its verdicts on the tasks that reach it (a
    shadow on the new tiers before it then shows them after the candidate's failures too),
    so shadowing it again buys little and, on a fleet whose top tier costs hundreds of
    times the others, would spend the whole budget. Ordered as they first appear."""
    from policies.routing import attempt_tiers, resolve_routing, start_index

    tiers: list[str] = []
    fams: list[str] = []
    for c in blocked:
        for fam in families:
            mine = resolve_routing(c.policy, fam)
            theirs = resolve_routing(active, fam)
            if mine.escalation == theirs.escalation and mine.thresholds == theirs.thresholds \
                    and mine.forced_start == theirs.forced_start:
                continue
            # A fixed router (or one without cut points, or a forced start) starts every
            # task of the family on one tier and walks one plan; a score router's start
            # depends on each task: then no tier is known to serve them all.
            one_plan = (theirs.forced_start is not None or theirs.router == "fixed"
                        or not theirs.thresholds or not theirs.weights)
            first = start_index(theirs, {})
            started = {theirs.escalation[first]} if one_plan else set()
            served = set(attempt_tiers(theirs, first)) if one_plan else set()
            if theirs.exploration_rate > 0:
                served = started  # explored starts walk other plans too
            wanted = [t for i, t in enumerate(mine.escalation)
                      if t not in served or (i == 0 and t not in started)]
            if not wanted:
                continue
            if fam not in fams:
                fams.append(fam)
            tiers.extend(t for t in wanted if t not in tiers)
    return tiers, fams


def variant_targets(active: Any, blocked: list[Any], families: list[str],
                    default_variant: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tier -> variant, families) the blocked candidates need shown: a variant a candidate
    serves on a tier (its quantization) that the active policy does not, in the families
    whose plans use that tier. A shadow runs it beside the served attempt
    (``routing.shadow_variants``), on the same task, so no caller ever sees it."""
    from policies.routing import resolve_routing

    variants: dict[str, str] = {}
    fams: list[str] = []
    for c in blocked:
        for tier, variant in c.policy.spec.quantization.items():
            mine = variant or default_variant.get(tier)
            served = active.spec.quantization.get(tier) or default_variant.get(tier)
            if mine is None or mine == served or tier in variants:
                continue
            users = [f for f in families if tier in resolve_routing(c.policy, f).escalation]
            if users:
                variants[tier] = mine
                fams.extend(f for f in users if f not in fams)
    return variants, fams


def adapter_targets(active: Any, blocked: list[Any], families: list[str]
                    ) -> dict[str, dict[str, str]]:
    """family -> (tier -> adapter) the blocked candidates need shown: an adapter a candidate
    serves for a family (its distillation) that the active policy does not. A shadow runs
    it beside the family's served attempt (the family's ``routing.shadow_adapters``)."""
    out: dict[str, dict[str, str]] = {}
    for c in blocked:
        for fam, d in c.policy.spec.distillation.items():
            mine = active.spec.distillation.get(fam)
            if fam not in families or (mine is not None
                                       and (mine.tier, mine.adapter) == (d.tier, d.adapter)):
                continue
            out.setdefault(fam, {}).setdefault(d.tier, d.adapter)
    return out


def effective_shadow_rate(policy: Any, family: str) -> float:
    """The share of a family's tasks that really get a shadow: its shadow rate, or 0 when no
    tier is left to shadow on (e.g. an escalation order of one tier and no shadow tiers)."""
    from policies.routing import resolve_routing, shadow_targets

    routing = resolve_routing(policy, family)
    if not any(shadow_targets(routing, t) for t in routing.escalation):
        return 0.0
    return routing.shadow_rate


def _with_shadows(active: Any, tiers: list[str], families: list[str], all_families: list[str],
                  rate: float, variants: dict[str, str] | None = None,
                  adapters: dict[str, dict[str, str]] | None = None) -> Any:
    """The active policy with the shadows of ``families`` replaced by shadows at ``rate`` on
    ``tiers`` (the budget pays for all of them); every other family keeps the shadows it
    really had (naming shadow tiers must not wake a dormant
    shadow rate elsewhere: that would spend the budget where no candidate needs evidence)."""
    routing = active.spec.routing.model_dump(mode="json")
    routing["shadow_tiers"] = list(tiers)
    routing["shadow_variants"] = dict(variants or {})
    if set(families) >= set(all_families):  # every family: one policy-wide rate
        routing["shadow_rate"] = rate
        for entry in routing.get("families", {}).values():
            entry.pop("shadow_rate", None)
    else:
        overrides = routing.get("families", {})
        for fam in all_families:
            entry = dict(overrides.get(fam, {}))
            # The change replaces the shadows of the families it explores (its budget pays
            # for all of them); the others keep what really runs.
            entry["shadow_rate"] = rate if fam in families else effective_shadow_rate(active,
                                                                                     fam)
            overrides[fam] = entry
        routing["families"] = overrides
    for entry in routing.get("families", {}).values():
        entry.pop("shadow_adapters", None)
    for fam, wanted in (adapters or {}).items():
        routing.setdefault("families", {}).setdefault(fam, {})["shadow_adapters"] = dict(wanted)
    return active.evolve(author=AUTHOR, routing=routing,
                         description=f"exploration: shadow {rate:.0%} of tasks on "
                         f"{_label(tiers, variants, adapters)}")


def _label(tiers: list[str], variants: dict[str, str] | None,
           adapters: dict[str, dict[str, str]] | None = None) -> str:
    named = {t: a for wanted in (adapters or {}).values() for t, a in wanted.items()}

    def one(t: str) -> str:
        out = f"{t}/{variants[t]}" if variants and t in variants else t
        return f"{out}+{named[t]}" if t in named else out

    return ", ".join(one(t) for t in tiers)


def _eval_spend(policy: Any, context: Any) -> float:
    return float(replay_policy(policy, context).eval.sum())


def _extra_usd_per_day(policy: Any, context: Any, base_eval: float, days: int) -> float:
    """What ``policy``'s evaluation spend adds per day over ``base_eval`` (the active's)."""
    return (_eval_spend(policy, context) - base_eval) / max(days, 1)


def _without_shadows(policy: Any) -> Any:
    """``policy`` with no shadow anywhere (to tell whether shadows on some tiers would run
    at all)."""
    routing = policy.spec.routing.model_dump(mode="json")
    routing["shadow_rate"] = 0.0
    routing.pop("shadow_tiers", None)
    routing.pop("shadow_variants", None)
    for entry in routing.get("families", {}).values():
        entry.pop("shadow_adapters", None)
        if entry.get("shadow_rate") is not None:
            entry["shadow_rate"] = 0.0
    return policy.evolve(author=AUTHOR, routing=routing)


def shadow_share_per_tier(policy: Any, family: str, tiers: list[str],
                          variants: dict[str, str] | None = None,
                          adapters: dict[str, dict[str, str]] | None = None) -> float:
    """The share of ``family``'s tasks ``policy`` shadows on each of ``tiers``, at the least
    (``policies.routing.shadow_probability`` from the family's routed start on features it
    cannot see: its first tier). Evidence on a tier grows with this, not with the shadow
    rate: a 100% rate spread over four tiers shows each on a quarter of the tasks, and the
    estimator weighs each shadowed path by the inverse of these odds."""
    from policies.routing import resolve_routing, shadow_probability, start_index

    if not tiers or effective_shadow_rate(policy, family) <= 0:
        return 0.0
    routing = resolve_routing(policy, family)
    first = routing.escalation[start_index(routing, {})]
    wanted = variants or {}
    wanted_adapter = (adapters or {}).get(family, {})
    served = policy.spec.distillation.get(family)

    def share(t: str) -> float:
        a = wanted_adapter.get(t)
        if a is not None and (served is None or (served.tier, served.adapter) != (t, a)):
            # an adapter the family is not served with: seen only through shadows with it
            if routing.shadow_adapters.get(t) != a:
                return 0.0
            return shadow_probability(routing, first, t)
        v = wanted.get(t)
        if v is not None and v != policy.spec.quantization.get(t):
            # a variant the policy does not serve: seen only through shadows running it
            if routing.shadow_variants.get(t) != v:
                return 0.0
            return shadow_probability(routing, first, t)
        return 1.0 if t == first else shadow_probability(routing, first, t)

    return min(share(t) for t in tiers)


def _sized_shadows(active: Any, context: Any, tiers: list[str], fams: list[str],
                   families: list[str], base_eval: float, budget_day: float, days: int,
                   variants: dict[str, str], adapters: dict[str, dict[str, str]] | None = None
                   ) -> float | tuple[str, list[str], list[str]]:
    """The shadow rate on ``tiers`` (``variants`` and ``adapters`` where named) in ``fams``
    that the budget buys, or why there is none worth a change (reason, tiers, families)."""

    def usd_day(rate: float) -> float:
        policy = _with_shadows(active, tiers, fams, families, rate, variants, adapters)
        return _extra_usd_per_day(policy, context, base_eval, days)

    silent = _without_shadows(active)
    if _eval_spend(_with_shadows(silent, tiers, fams, families, 1.0, variants, adapters),
                   context) \
            <= _eval_spend(silent, context):
        return ((f"the tiers the blocked candidates need ({', '.join(tiers)}) already serve "
                 "those tasks first: a shadow adds no evidence, thin support on them is not "
                 "what blocks"), tiers, fams)
    # What really runs already, per wanted tier (a tier the family starts on counts as seen).
    now = max(shadow_share_per_tier(active, f, tiers, variants, adapters) for f in fams)
    # Spend rises with the rate but not always in proportion (naming shadow tiers can let the
    # active policy's own shadow rate reach tiers it could not before): the largest rate on a
    # 1% grid whose replayed spend fits the budget, by bisection.
    low, high = 0, 100
    while low < high:
        mid = (low + high + 1) // 2
        if usd_day(mid / 100) <= budget_day:
            low = mid
        else:
            high = mid - 1
    rate = low / 100
    explored = _with_shadows(active, tiers, fams, families, rate, variants, adapters)
    per_tier = min(shadow_share_per_tier(explored, f, tiers, variants, adapters) for f in fams)
    if rate < MIN_RATE or per_tier < now + MIN_RATE / len(tiers):
        return ((f"the budget (${budget_day:.4f}/day) buys a shadow rate of {rate:.0%}, "
                 f"{per_tier:.1%} of tasks on each of {_label(tiers, variants, adapters)}: "
                 "less than "
                 f"{MIN_RATE / len(tiers):.1%} above the {now:.1%} already shadowed there"),
                tiers, fams)
    return rate


def plan_exploration(result: Any, window: Any, active: Any, *, budget_share: float = 0.02,
                     min_saving: float = 0.02, days: int = 1, level: float = 0.9
                     ) -> ExplorationPlan:
    """The exploration change for tonight, sized to ``budget_share`` of the window's spend
    (see the module docstring). ``result`` is the search's ``SearchResult`` (its replay
    context and bootstrap weights are reused, so the prediction is paired with the
    active policy's like any candidate's)."""
    from experiments.search import Candidate

    # The ranked candidates, then those the search held back only for support (the best
    # ideas the window cannot confirm are exactly what exploration is for).
    blocked = blocked_candidates([*result, *getattr(result, "unsupported", [])], min_saving)
    if not blocked:
        return ExplorationPlan(None, "no promising candidate is blocked by thin evidence")
    context, weights, active_est = result.context, result.weights, result.active_estimate
    if context is None or active_est is None:
        return ExplorationPlan(None, "the search kept no replay context")
    families = list(window.families)

    def targets(cands: list[Any]) -> tuple[list[str], list[str], dict[str, str],
                                           dict[str, dict[str, str]]]:
        tiers, fams = exploration_targets(active, cands, families)
        variants, v_fams = variant_targets(active, cands, families, window.default_variant)
        adapters = adapter_targets(active, cands, families)
        a_tiers = [t for wanted in adapters.values() for t in wanted]
        return (list(dict.fromkeys([*tiers, *variants, *a_tiers])),
                list(dict.fromkeys([*fams, *v_fams, *adapters])), variants, adapters)

    tiers, fams, variants, adapters = targets(blocked)
    aim = [{"hash": c.policy.content_hash[:12], "lever": c.lever,
            "d_cost_per_green_pr": c.deltas.cost_per_green_pr.point,
            "interval": [c.deltas.cost_per_green_pr.low, c.deltas.cost_per_green_pr.high],
            "green_prs_interval": [c.deltas.green_prs.low, c.deltas.green_prs.high],
            "support": c.estimate.support,
            "why_blocked": "; ".join(c.reasons) or "risk high (thin support)",
            # The spec itself, so a later night can say what the evidence bought for it.
            "spec": c.policy.spec_json()}
           for c in blocked[:3]]
    if not tiers:
        return ExplorationPlan(None, "the blocked candidates use no tier the active policy "
                               "leaves unobserved", blocked=aim)
    spend_day = active_est.spend_usd.point / max(days, 1)
    budget_day = budget_share * spend_day
    base_eval = _eval_spend(active, context)
    # All the blocked candidates' tiers first; when the shadows already run on all of them
    # (one shadow a task cannot show more), the best few candidates' own tiers, one at a time:
    # evidence concentrated where the most promising idea needs it.
    options = [(tiers, fams, variants, adapters)]
    # (Re-aiming the shadows can cost less than now; an owner who set no budget still gets
    # no exploration change.)
    for c in (blocked[:3] if budget_day > 0 else []):
        own = targets([c])
        if own[0] and own not in options:
            options.append(own)
    refusal = None
    for tiers, fams, variants, adapters in options:
        sized = _sized_shadows(active, context, tiers, fams, families, base_eval,
                               budget_day, days, variants, adapters)
        if isinstance(sized, float):
            rate = sized
            break
        refusal = refusal or sized
    else:
        reason, tiers, fams = refusal
        return ExplorationPlan(None, reason, tiers=tuple(tiers), families=tuple(fams),
                               budget_usd_per_day=budget_day, blocked=aim)

    policy = _with_shadows(active, tiers, fams, families, rate, variants, adapters)
    if policy.content_hash == active.content_hash:
        return ExplorationPlan(None, "the active policy already explores these tiers at this "
                               "rate", tiers=tuple(tiers), families=tuple(fams), rate=rate,
                               blocked=aim)
    spent = _extra_usd_per_day(policy, context, base_eval, days)
    est = estimate(policy, window, context=context, weights=weights, level=level)
    deltas = compare(est, active_est)
    candidate = Candidate(policy=policy, lever="exploration", point={"shadow_rate": rate},
                          estimate=est, deltas=deltas, feasible=True, risk="low",
                          risk_reasons=["exploration only: shadow outputs never reach callers"])
    return ExplorationPlan(candidate, f"shadow {rate:.0%} of the tasks of "
                           f"{len(fams)} famil{'y' if len(fams) == 1 else 'ies'} on "
                           f"{_label(tiers, variants, adapters)}: ${spent:.4f}/day of a "
                           f"${budget_day:.4f}/day "
                           "budget", tiers=tuple(tiers), families=tuple(fams), rate=rate,
                           usd_per_day=spent, budget_usd_per_day=budget_day, blocked=aim)


def evidence_bought(blocked: list[dict[str, Any]], window: Any, result: Any,
                    active: Any, level: float = 0.9) -> list[dict[str, Any]]:
    """What an exploration bought: each blocked spec it was for (as its plan recorded it)
    estimated again on a later window (``result`` is that night's search), support and
    interval widths before -> after, and whether its Green PRs are now ``decided``
    (``non-inferior`` or ``inferior`` beyond the margin on the interval) or still ``open``."""
    from policies.policy import Policy

    margin = active.spec.gates.non_inferiority_margin
    if result.context is None or result.active_estimate is None:
        return []
    out = []
    for entry in blocked:
        spec = entry.get("spec")
        if not spec:
            continue
        policy = Policy.model_validate({"metadata": {**active.metadata.model_dump(),
                                                     "author": AUTHOR},
                                        "spec": spec})
        est = estimate(policy, window, context=result.context, weights=result.weights,
                       level=level)
        d = compare(est, result.active_estimate)
        before_g = entry.get("green_prs_interval") or [float("nan")] * 2
        before_c = entry.get("interval") or [float("nan")] * 2
        out.append({
            "hash": entry.get("hash"),
            "support": [entry.get("support"), est.support],
            "green_prs_interval_width": [before_g[1] - before_g[0], d.green_prs.width],
            "cost_interval_width": [before_c[1] - before_c[0], d.cost_per_green_pr.width],
            "d_cost_per_green_pr": [entry.get("d_cost_per_green_pr"),
                                    d.cost_per_green_pr.point],
            "green_prs_low": [before_g[0], d.green_prs.low],
            "decided": ("non-inferior" if d.green_prs.low >= -margin else
                        "inferior" if d.green_prs.high < -margin else "open"),
        })
    return out
