"""How a policy turns a task into the ordered tiers it tries.

This module is the executable form of ``docs/policy.md``: the gateway, the replay
estimator and any outside tool apply a policy to a task through these functions, so the
three agree by construction. Everything here is pure and deterministic; randomness
(exploration, shadow) comes in as an explicit uniform draw.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass

from policies.policy import Policy

__all__ = [
    "PlannedAttempt",
    "ResolvedRouting",
    "attempt_tier_probabilities",
    "attempt_tiers",
    "choose_start",
    "difficulty_score",
    "feature_number",
    "first_tier_probabilities",
    "in_canary",
    "resolve_routing",
    "shadow_adapter",
    "shadow_probability",
    "shadow_targets",
    "shadow_tier",
    "shadow_variant",
    "start_index",
    "tier_plan",
]

Feature = float | int | bool | str | None


def canary_draw(task_id: str) -> float:
    """A uniform draw in [0, 1) fixed by the task id alone (no seed): which tasks a canary
    serves is reproducible by anyone who knows the ids."""
    import hashlib

    digest = hashlib.sha256(f"canary:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_canary(task_id: str, share: float) -> bool:
    """Whether a new task goes to a running canary serving ``share`` of new tasks. Steps
    only raise the share, so a task in the canary at 10% is in it at 50% too."""
    return canary_draw(task_id) < share


@dataclass(frozen=True)
class ResolvedRouting:
    """The routing a family gets once per-family overrides, distillation and caps are applied."""

    escalation: tuple[str, ...]
    weights: Mapping[str, float]
    bias: float
    thresholds: tuple[float, ...]
    attempts_per_tier: int
    max_attempts: int
    exploration_rate: float
    shadow_rate: float
    shadow_tiers: tuple[str, ...]  # empty: any other tier of the escalation order
    shadow_variants: Mapping[str, str]  # tier -> the variant its shadows run on
    shadow_adapters: Mapping[str, str]  # tier -> the adapter the family's shadows run with
    router: str
    forced_start: int | None  # set by distillation: the index the task must start at
    adapter_tier: str | None
    adapter: str | None


@dataclass(frozen=True)
class PlannedAttempt:
    attempt: int  # 1-based
    tier: str
    variant: str | None  # None: the tier's default variant in the fleet manifest
    adapter: str | None


def resolve_routing(policy: Policy, family: str) -> ResolvedRouting:
    spec = policy.spec
    r = spec.routing
    o = r.families.get(family)

    def pick(name: str):
        value = getattr(o, name) if o is not None else None
        return getattr(r, name) if value is None else value

    escalation = list(pick("escalation"))
    max_attempts = pick("max_attempts")
    if spec.guardrails.max_attempts_per_task is not None:
        max_attempts = min(max_attempts, spec.guardrails.max_attempts_per_task)

    forced_start = adapter_tier = adapter = None
    target = spec.distillation.get(family)
    if target is not None:
        adapter_tier, adapter = target.tier, target.adapter
        if target.tier in escalation:
            forced_start = escalation.index(target.tier)
        else:
            escalation = [target.tier, *escalation]
            forced_start = 0

    thresholds = tuple(pick("thresholds"))
    if target is not None and target.tier not in r.escalation and thresholds:
        thresholds = ()  # a forced start makes the score irrelevant; keep the shape valid
    return ResolvedRouting(
        escalation=tuple(escalation),
        weights=dict(pick("weights")),
        bias=float(pick("bias")),
        thresholds=thresholds,
        attempts_per_tier=pick("attempts_per_tier"),
        max_attempts=max_attempts,
        exploration_rate=r.exploration_rate,
        shadow_rate=float(pick("shadow_rate")),
        shadow_tiers=tuple(r.shadow_tiers),
        shadow_variants=dict(r.shadow_variants),
        shadow_adapters=dict((o.shadow_adapters if o is not None else None) or {}),
        router=r.router,
        forced_start=forced_start,
        adapter_tier=adapter_tier,
        adapter=adapter,
    )


def feature_number(value: Feature) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def difficulty_score(routing: ResolvedRouting, features: Mapping[str, Feature]) -> float:
    """bias + sum(weight * feature); a missing or non-numeric feature counts as 0."""
    return routing.bias + sum(w * feature_number(features.get(k))
                              for k, w in routing.weights.items())


def start_index(routing: ResolvedRouting, features: Mapping[str, Feature]) -> int:
    """Index into ``escalation`` of the first attempt's tier, before exploration."""
    if routing.forced_start is not None:
        return routing.forced_start
    if routing.router == "fixed" or not routing.thresholds:
        return 0
    return bisect_right(routing.thresholds, difficulty_score(routing, features))


def attempt_tiers(routing: ResolvedRouting, start: int) -> list[str]:
    """Tiers of attempts 1..max_attempts when the task starts at ``escalation[start]``.

    Each tier from the start upward gets ``attempts_per_tier`` tries; once the top of the
    order is reached its last tier takes the remaining attempts (repair loops).
    """
    tiers: list[str] = []
    for tier in routing.escalation[start:]:
        tiers.extend([tier] * routing.attempts_per_tier)
    while len(tiers) < routing.max_attempts:
        tiers.append(routing.escalation[-1])
    return tiers[: routing.max_attempts]


def tier_plan(
    policy: Policy, family: str, features: Mapping[str, Feature], *, start: int | None = None
) -> list[PlannedAttempt]:
    """The ordered attempts a task would make (it stops at the first that passes)."""
    routing = resolve_routing(policy, family)
    k = start_index(routing, features) if start is None else start
    quant = policy.spec.quantization
    return [
        PlannedAttempt(
            attempt=i + 1,
            tier=tier,
            variant=quant.get(tier),
            adapter=routing.adapter if tier == routing.adapter_tier else None,
        )
        for i, tier in enumerate(attempt_tiers(routing, k))
    ]


def first_tier_probabilities(
    policy: Policy, family: str, features: Mapping[str, Feature]
) -> dict[int, float]:
    """P(start index) under exploration: (1 - e) on the routed index plus e/n on every index.

    A distilled family (forced start) is never explored: its start is part of the change.
    """
    routing = resolve_routing(policy, family)
    k = start_index(routing, features)
    n = len(routing.escalation)
    eps = 0.0 if routing.forced_start is not None else routing.exploration_rate
    probs = {i: eps / n for i in range(n)}
    probs[k] = probs[k] + (1.0 - eps)
    return probs


def attempt_tier_probabilities(
    policy: Policy, family: str, features: Mapping[str, Feature]
) -> list[dict[str, float]]:
    """For attempt j (list index j-1): P(tier used | the task reached attempt j).

    This is the ``autopilot.propensity`` the gateway logs for each attempt.
    """
    routing = resolve_routing(policy, family)
    out: list[dict[str, float]] = [{} for _ in range(routing.max_attempts)]
    for start, p in first_tier_probabilities(policy, family, features).items():
        for j, tier in enumerate(attempt_tiers(routing, start)):
            out[j][tier] = out[j].get(tier, 0.0) + p
    return out


def choose_start(
    policy: Policy, family: str, features: Mapping[str, Feature], draw: float, pick: float
) -> tuple[int, float]:
    """Start index and its propensity from two uniform draws in [0, 1).

    ``draw < exploration_rate`` explores: index ``floor(pick * n)``; otherwise the routed one.
    """
    routing = resolve_routing(policy, family)
    probs = first_tier_probabilities(policy, family, features)
    n = len(routing.escalation)
    if routing.forced_start is None and draw < routing.exploration_rate:
        k = min(int(pick * n), n - 1)
    else:
        k = start_index(routing, features)
    return k, probs[k]


def shadow_tier(
    policy: Policy, family: str, first_tier: str, draw: float, pick: float
) -> str | None:
    """The tier a shadow copy of the first attempt runs on, or None (no shadow this task).

    ``draw < shadow_rate`` (the family's, else the policy's) shadows, on
    ``others[floor(pick * len(others))]`` where ``others`` is ``shadow_targets``.
    """
    routing = resolve_routing(policy, family)
    others = shadow_targets(routing, first_tier)
    if not others or draw >= routing.shadow_rate:
        return None
    return others[min(int(pick * len(others)), len(others) - 1)]


def shadow_probability(routing: ResolvedRouting, first_tier: str, tier: str) -> float:
    """P(the first attempt on ``first_tier`` is shadowed on ``tier``): ``shadow_tier``'s
    odds, the propensity a shadow attempt is logged with. The estimator reads a shadow
    beside a served path as one more route to the cascade that starts on the shadow's tier
    (``experiments.replay``), weighted by the inverse of start propensity x this."""
    others = shadow_targets(routing, first_tier)
    if tier not in others:
        return 0.0
    return min(max(routing.shadow_rate, 0.0), 1.0) / len(others)


def shadow_targets(routing: ResolvedRouting, first_tier: str) -> list[str]:
    """The tiers a shadow of a first attempt on ``first_tier`` may run on: ``shadow_tiers``
    when the policy names any (they may lie outside the escalation order: evidence on a
    tier the policy does not route to is what exploration buys), else the rest of the
    escalation order; ``first_tier`` itself only where ``shadow_variants`` gives it another
    variant or ``shadow_adapters`` an adapter."""
    pool = routing.shadow_tiers or routing.escalation
    return [t for t in pool if t != first_tier or t in routing.shadow_variants
            or t in routing.shadow_adapters]


def shadow_variant(policy: Policy, tier: str) -> str | None:
    """The variant a shadow on ``tier`` runs: ``shadow_variants``' (a variant the policy does
    not serve, e.g. int8 beside bf16: what exploration buys for a quantization), else the
    policy's own (None: the fleet's default)."""
    return policy.spec.routing.shadow_variants.get(tier) or policy.spec.quantization.get(tier)


def shadow_adapter(routing: ResolvedRouting, tier: str) -> str | None:
    """The adapter a shadow on ``tier`` runs with (the family's ``shadow_adapters``; a
    shadow otherwise runs the tier without one, whatever the family serves)."""
    return routing.shadow_adapters.get(tier)
