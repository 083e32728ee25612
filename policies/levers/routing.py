"""Routing lever: escalation order, score weights and cut points, attempt caps, and the
exploration / shadow budget that keeps the off-policy estimate honest.

Cut points are searched as quantiles of the weighted score over the window's tasks, so the
space means the same thing whatever a feature's scale. A candidate keeps the active
policy's per-family overrides when they remain valid with the new order, and drops them
otherwise (the description says so).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "MAX_WEIGHTED_FEATURES", "NAME", "anchor", "apply", "escalation_options",
           "space"]

NAME = "routing"
MAX_WEIGHTED_FEATURES = 3
MAX_FAMILY_OVERRIDES = 6
INHERIT = "inherit"
EXPLORATION = (0.0, 0.02, 0.05, 0.1)
SHADOW = (0.0, 0.02, 0.05)


def escalation_options(tiers: list[str]) -> list[str]:
    """Every non-empty subsequence of the tiers, cheap to expensive, as ``"S>M>L"``."""
    out = []
    for size in range(1, len(tiers) + 1):
        out.extend(">".join(c) for c in combinations(tiers, size))
    return out


def _features(ctx: LeverContext) -> list[str]:
    return sorted(ctx.feature_sample)[:MAX_WEIGHTED_FEATURES]


def space(active, ctx: LeverContext) -> dict[str, Param]:
    tiers = ctx.fleet.tier_names
    out: dict[str, Param] = {
        "escalation": Param.choice(*escalation_options(tiers)),
        "router": Param.choice("score", "fixed"),
        "attempts_per_tier": Param.integer(1, 2),
        "max_attempts": Param.integer(1, len(tiers) + 2),
        "exploration_rate": Param.choice(*sorted({*EXPLORATION, active.spec.routing.exploration_rate})),
        "shadow_rate": Param.choice(*sorted({*SHADOW, active.spec.routing.shadow_rate})),
    }
    for name in _features(ctx):
        out[f"w_{name}"] = Param.uniform(-1.0, 1.0)
    for i in range(len(tiers) - 1):
        out[f"cut_{i}"] = Param.uniform(0.0, 1.0)
    # Per-family overrides: a family may start from a fixed order of its own, or give up
    # sooner (fewer attempts) where the policy-wide cascade wastes spend on it.
    for fam in sorted(ctx.families)[:MAX_FAMILY_OVERRIDES]:
        out[f"family_{fam}_escalation"] = Param.choice(INHERIT, *escalation_options(tiers))
        out[f"family_{fam}_max_attempts"] = Param.choice(0, *range(1, len(tiers) + 2))
    return out


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    """The point of this space closest to the active policy (where the search starts)."""
    r = active.spec.routing
    tiers = ctx.fleet.tier_names
    point: dict[str, Any] = {
        "escalation": ">".join(r.escalation) if ">".join(r.escalation) in
        escalation_options(tiers) else tiers[0],
        "router": r.router,
        "attempts_per_tier": min(2, r.attempts_per_tier),
        "max_attempts": min(len(tiers) + 2, r.max_attempts),
        "exploration_rate": r.exploration_rate,
        "shadow_rate": r.shadow_rate,
    }
    for name in _features(ctx):
        point[f"w_{name}"] = max(-1.0, min(1.0, float(r.weights.get(name, 0.0))))
    for i in range(len(tiers) - 1):
        point[f"cut_{i}"] = (i + 1) / len(tiers)
    for fam in sorted(ctx.families)[:MAX_FAMILY_OVERRIDES]:
        point[f"family_{fam}_escalation"] = INHERIT
        point[f"family_{fam}_max_attempts"] = 0
    return point


def _family_overrides(point: dict[str, Any], families: dict[str, Any]) -> dict[str, Any]:
    out = {f: dict(v) for f, v in families.items()}
    for key, value in point.items():
        if not key.startswith("family_"):
            continue
        if key.endswith("_max_attempts"):
            fam, field = key[len("family_"):-len("_max_attempts")], "max_attempts"
        elif key.endswith("_escalation"):
            fam, field = key[len("family_"):-len("_escalation")], "escalation"
        else:
            continue
        entry = out.get(fam, {})
        if field == "escalation":
            if value == INHERIT:
                for k in ("escalation", "thresholds", "weights"):
                    entry.pop(k, None)
            else:
                # A family order of its own starts at its first tier (no score cut points).
                entry.update({"escalation": str(value).split(">"), "thresholds": []})
        elif field == "max_attempts":
            if int(value):
                entry["max_attempts"] = int(value)
            else:
                entry.pop("max_attempts", None)
        entry = {k: v for k, v in entry.items() if v is not None}
        if entry:
            out[fam] = entry
        else:
            out.pop(fam, None)
    return out


def _thresholds(point: dict[str, Any], ctx: LeverContext, weights: dict[str, float],
                count: int) -> list[float]:
    names = list(weights)
    rows = len(ctx.feature_sample[names[0]]) if names else 0
    scores = sorted(sum(weights[k] * ctx.feature_sample[k][r] for k in names)
                    for r in range(rows))
    qs = sorted(float(point.get(f"cut_{i}", (i + 1) / (count + 1))) for i in range(count))
    cuts: list[float] = []
    for q in qs:
        value = scores[min(len(scores) - 1, int(q * (len(scores) - 1)))] if scores else q
        if cuts and value <= cuts[-1]:
            value = cuts[-1] + 1e-6
        cuts.append(round(value, 9) if not cuts or round(value, 9) > cuts[-1] else value)
    return cuts


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    from policies.policy import RoutingSpec

    r = active.spec.routing
    escalation = str(point.get("escalation", ">".join(r.escalation))).split(">")
    weights = {name[2:]: round(float(v), 6) for name, v in point.items()
               if name.startswith("w_")}
    weights = {k: v for k, v in weights.items() if v != 0.0}
    router = point.get("router", r.router)
    thresholds: list[float] = []
    if router == "score" and len(escalation) > 1 and weights:
        thresholds = _thresholds(point, ctx, weights, len(escalation) - 1)
    elif router == "score":
        router = "fixed"  # nothing to score on: the first tier of the order
    data = r.model_dump(mode="json")
    data.update({
        "router": router,
        "escalation": escalation,
        "weights": weights if router == "score" else {},
        "bias": 0.0,
        "thresholds": thresholds,
        "attempts_per_tier": int(point.get("attempts_per_tier", r.attempts_per_tier)),
        "max_attempts": int(point.get("max_attempts", r.max_attempts)),
        "exploration_rate": float(point.get("exploration_rate", r.exploration_rate)),
        "shadow_rate": float(point.get("shadow_rate", r.shadow_rate)),
    })
    note = ""
    data["families"] = _family_overrides(
        point, {f: o.model_dump(mode="json", exclude_none=True) for f, o in r.families.items()})
    try:
        routing = RoutingSpec.model_validate(data)
    except ValueError:
        # Inherited cut points that no longer fit the new order go; the rest stays.
        kept = {}
        for fam, entry in data["families"].items():
            entry = dict(entry)
            if "escalation" not in entry:
                entry.pop("thresholds", None)
            if entry:
                kept[fam] = entry
        data["families"] = kept
        note = " (per-family cut points dropped: invalid with the new order)"
        try:
            routing = RoutingSpec.model_validate(data)
        except ValueError:
            data["families"] = {}
            routing = RoutingSpec.model_validate(data)
            note = " (per-family overrides dropped: invalid with the new order)"
    return active.evolve(author=author, description=f"routing search{note}", routing=routing)


LEVER = LeverSpec(
    name=NAME,
    policy_section="routing",
    summary="Which tier a task starts on and how it escalates: the escalation order, the "
            "difficulty score's weights and cut points, attempts per tier and per task "
            "(also per family), and the exploration and shadow rates that keep the "
            "estimate honest.",
    params=("escalation", "router", "attempts_per_tier", "max_attempts", "exploration_rate",
            "shadow_rate", "w_<feature>", "cut_<i>", "family_<family>_escalation",
            "family_<family>_max_attempts"),
    space=space,
    anchor=anchor,
    apply=apply,
    gates=("pinned_weights", "reproducibility", "quality_non_inferiority", "cost_latency"),
    serving_effect="serving.gateway_core.GatewayCore.route",
    estimate="experiments.replay.replay_policy",
    report="`spec.routing.*` lines of the policy diff (order, weights, cut points, attempts, "
           "rates); the tier-mix chart shows the shift",
)
