"""Routing lever: escalation order, score weights and cut points, attempt caps, and the
exploration / shadow budget that keeps the off-policy estimate honest.

The space always contains the active policy (``anchor`` applied gives it back, content
hash and all), so the search can propose a small step from where the fleet is:

- ``escalation`` is every cheap-to-expensive subsequence of the tiers plus the active
  order (e.g. "top tier first", L>M>S), whatever it is;
- the score keeps the active ``bias`` and the weights of features the window does not
  show; ``w_<feature>`` ranges include the active weight;
- ``cuts`` is ``keep`` (the active cut points, when they fit the order's length) or
  ``quantiles``: the cut points ``cut_<i>`` as quantiles of the score (bias included)
  over the window's tasks, so the space means the same thing whatever a feature's scale;
- per-family overrides go to the families that carry the spend (and, first, to those the
  estimate says a routing of their own could save most on: ``LeverContext.family_saving``
  then ``family_usd``), as many as ``PARAM_BUDGET`` leaves after the policy-wide
  parameters (two per family). A family's ``keep`` leaves its active override as it is.

A candidate keeps the active policy's per-family overrides when they remain valid with the
new order, and drops them otherwise (the description says so).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "MAX_WEIGHTED_FEATURES", "NAME", "PARAM_BUDGET", "anchor", "apply",
           "escalation_options", "override_families", "space"]

NAME = "routing"
MAX_WEIGHTED_FEATURES = 3
# At most this many routing parameters: what the policy-wide ones leave goes to per-family
# overrides, two parameters per family (TPE's efficiency falls with the dimension).
PARAM_BUDGET = 40
PER_FAMILY = 2
INHERIT = "inherit"
KEEP = "keep"
QUANTILES = "quantiles"
EXPLORATION = (0.0, 0.02, 0.05, 0.1)
SHADOW = (0.0, 0.02, 0.05)
_SCORE_FIELDS = ("escalation", "thresholds", "weights", "bias")


def escalation_options(tiers: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """Every non-empty subsequence of the tiers, cheap to expensive, as ``"S>M>L"``, then
    each order of ``extra`` not among them (an active order such as ``"L>M>S"``)."""
    out = []
    for size in range(1, len(tiers) + 1):
        out.extend(">".join(c) for c in combinations(tiers, size))
    out.extend(e for e in dict.fromkeys(extra) if e not in out)
    return out


def _features(active, ctx: LeverContext) -> list[str]:
    """Searched weights: features the window shows, the active policy's weighted ones first."""
    weighted = [f for f in sorted(active.spec.routing.weights) if f in ctx.feature_sample]
    rest = [f for f in sorted(ctx.feature_sample) if f not in weighted]
    return (weighted + rest)[:MAX_WEIGHTED_FEATURES]


def _base_space(active, ctx: LeverContext) -> dict[str, Param]:
    r = active.spec.routing
    tiers = ctx.fleet.tier_names
    out: dict[str, Param] = {
        "escalation": Param.choice(*escalation_options(tiers, (">".join(r.escalation),))),
        "router": Param.choice("score", "fixed"),
        "attempts_per_tier": Param.integer(1, max(2, r.attempts_per_tier)),
        "max_attempts": Param.integer(1, max(len(tiers) + 2, r.max_attempts)),
        "exploration_rate": Param.choice(*sorted({*EXPLORATION, r.exploration_rate})),
        "shadow_rate": Param.choice(*sorted({*SHADOW, r.shadow_rate})),
    }
    for name in _features(active, ctx):
        w = float(r.weights.get(name, 0.0))
        out[f"w_{name}"] = Param.uniform(min(-1.0, w), max(1.0, w))
    if len(tiers) > 1:
        out["cuts"] = Param.choice(KEEP, QUANTILES)
        for i in range(len(tiers) - 1):
            out[f"cut_{i}"] = Param.uniform(0.0, 1.0)
    return out


def override_families(active, ctx: LeverContext, budget: int = PARAM_BUDGET) -> list[str]:
    """The families that get per-family parameters, most promising first.

    Ranked by the saving the estimate sees for a routing of their own
    (``ctx.family_saving``), then by spend (``ctx.family_usd``); a family that spent
    nothing in the window is left out. Without spend figures, families in name order. As
    many as ``budget`` leaves after the policy-wide parameters, two per family.
    """
    slots = max(0, (budget - len(_base_space(active, ctx))) // PER_FAMILY)
    families = sorted(ctx.families)
    if ctx.family_usd or ctx.family_saving:
        families = [f for f in families
                    if ctx.family_usd.get(f, 0.0) > 0 or ctx.family_saving.get(f, 0.0) > 0]
        families.sort(key=lambda f: (-ctx.family_saving.get(f, 0.0),
                                     -ctx.family_usd.get(f, 0.0), f))
    return families[:slots]


def _override(active, family: str):
    return active.spec.routing.families.get(family)


def _has_score_override(active, family: str) -> bool:
    o = _override(active, family)
    return o is not None and any(getattr(o, k) is not None for k in _SCORE_FIELDS)


def space(active, ctx: LeverContext, *, budget: int = PARAM_BUDGET) -> dict[str, Param]:
    tiers = ctx.fleet.tier_names
    out = _base_space(active, ctx)
    # Per-family overrides: a family may start from a fixed order of its own, or give up
    # sooner (fewer attempts) where the policy-wide cascade wastes spend on it.
    for fam in override_families(active, ctx, budget):
        o = _override(active, fam)
        own = (">".join(o.escalation),) if o is not None and o.escalation else ()
        keep = (KEEP,) if _has_score_override(active, fam) else ()
        out[f"family_{fam}_escalation"] = Param.choice(INHERIT, *keep,
                                                       *escalation_options(tiers, own))
        attempts = {0, *range(1, len(tiers) + 2)}
        if o is not None and o.max_attempts is not None:
            attempts.add(o.max_attempts)
        out[f"family_{fam}_max_attempts"] = Param.choice(*sorted(attempts))
    return out


def _scores(ctx: LeverContext, weights: dict[str, float], bias: float) -> list[float]:
    names = [k for k, w in weights.items() if w and k in ctx.feature_sample]
    rows = len(ctx.feature_sample[names[0]]) if names else 0
    return sorted(bias + sum(weights[k] * ctx.feature_sample[k][r] for k in names)
                  for r in range(rows))


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    """The point of this space that applies back to the active policy (the search's start)."""
    r = active.spec.routing
    point: dict[str, Any] = {}
    scores = _scores(ctx, dict(r.weights), r.bias)
    for key in space(active, ctx):
        if key in ("escalation",):
            point[key] = ">".join(r.escalation)
        elif key in ("router", "attempts_per_tier", "max_attempts", "exploration_rate",
                     "shadow_rate"):
            point[key] = getattr(r, key)
        elif key.startswith("w_"):
            point[key] = float(r.weights.get(key[2:], 0.0))
        elif key == "cuts":
            point[key] = KEEP
        elif key.startswith("cut_"):
            # Where the active cut point sits among the window's scores (used if the search
            # switches to quantile cut points).
            i, n = int(key[len("cut_"):]), len(ctx.fleet.tier_names)
            q = (i + 1) / n
            if scores and i < len(r.thresholds):
                below = sum(s < r.thresholds[i] for s in scores)
                q = below / len(scores)
            point[key] = q
        elif key.endswith("_escalation"):
            fam = key[len("family_"):-len("_escalation")]
            point[key] = KEEP if _has_score_override(active, fam) else INHERIT
        elif key.endswith("_max_attempts"):
            o = _override(active, key[len("family_"):-len("_max_attempts")])
            point[key] = o.max_attempts if o is not None and o.max_attempts is not None else 0
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
            if value == KEEP:
                continue  # the active override's order and score stay as they are
            if value == INHERIT:
                for k in _SCORE_FIELDS:
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
                bias: float, count: int) -> list[float]:
    scores = _scores(ctx, weights, bias)
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
    # The active weights stay unless the point sets them (a feature the window does not
    # show is never searched, and keeps its weight); a changed weight is rounded.
    weights = dict(r.weights)
    for name, v in point.items():
        if not name.startswith("w_"):
            continue
        feature, value = name[2:], float(v)
        if value != r.weights.get(feature):
            value = round(value, 6)
        if value == 0.0:
            weights.pop(feature, None)
        else:
            weights[feature] = value
    router = point.get("router", r.router)
    count = len(escalation) - 1
    # A point without ``cuts`` keeps the active cut points unless it gives quantiles.
    searched = any(k.startswith("cut_") for k in point)
    keep = (point.get("cuts", QUANTILES if searched else KEEP) == KEEP
            and (not r.thresholds or len(r.thresholds) == count))
    scored = any(w and k in ctx.feature_sample for k, w in weights.items())
    if keep:
        thresholds = list(r.thresholds)
    elif router == "score" and count > 0 and scored:
        thresholds = _thresholds(point, ctx, weights, r.bias, count)
    else:
        # Nothing to score on (or a fixed router): the first tier of the order. The
        # weights and bias stay (inert), so the next step can start scoring from them.
        thresholds = []
        router = "fixed"
    data = r.model_dump(mode="json")
    data.update({
        "router": router,
        "escalation": escalation,
        "weights": weights,
        "bias": r.bias,
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
            "shadow_rate", "w_<feature>", "cuts", "cut_<i>", "family_<family>_escalation",
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
