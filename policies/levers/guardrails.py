"""Guardrails lever: per-task attempt, spend and token caps (a task over a cap ends
``budget_exceeded`` and goes to human triage). Spend and token caps are searched as
quantiles of the window's per-task values, so they mean the same on any fleet."""

from __future__ import annotations

from typing import Any

from contracts.guardrails import Cap
from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "NAME", "QUANTILES", "anchor", "apply", "space"]

NAME = "guardrails"
QUANTILES = {"none": None, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}
# The searched caps: each parameter is named after the GuardrailSpec field it sets.
ATTEMPTS = Cap.MAX_ATTEMPTS_PER_TASK.value
USD = Cap.MAX_USD_PER_TASK.value
TOKENS = Cap.MAX_TOKENS_PER_TASK.value


KEEP = "keep"


def _cap_choices(active, key: str) -> tuple[str, ...]:
    """``keep`` (the active cap, when one is set: the anchor) and the searched quantiles."""
    keep = (KEEP,) if getattr(active.spec.guardrails, key) is not None else ()
    return (*keep, *QUANTILES)


def space(active, ctx: LeverContext) -> dict[str, Param]:
    attempts = active.spec.guardrails.max_attempts_per_task or 0
    return {
        ATTEMPTS: Param.choice(*sorted({0, 1, 2, 3, 4, 5, 6, attempts})),
        USD: Param.choice(*_cap_choices(active, USD)),
        TOKENS: Param.choice(*_cap_choices(active, TOKENS)),
    }


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    g = active.spec.guardrails
    return {ATTEMPTS: g.max_attempts_per_task or 0,
            USD: KEEP if g.max_usd_per_task is not None else "none",
            TOKENS: KEEP if g.max_tokens_per_task is not None else "none"}


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    g = active.spec.guardrails.model_dump(mode="json")
    if ATTEMPTS in point:
        g[ATTEMPTS] = int(point[ATTEMPTS]) or None
    for key, sample, cast in ((USD, ctx.task_usd, float), (TOKENS, ctx.task_tokens, int)):
        if key in point and point[key] != KEEP:
            q = QUANTILES[point[key]]
            value = cast(ctx.quantile(sample, q)) if q is not None and sample else None
            g[key] = value if value else None
    return active.evolve(author=author, description="guardrails search", guardrails=g)


LEVER = LeverSpec(
    name=NAME,
    policy_section="guardrails",
    summary="Per-task caps on attempts, spend and tokens, refused before the model call: "
            "a task over its attempt cap goes to human triage, one over its spend or token "
            "cap ends budget_exceeded.",
    params=(ATTEMPTS, USD, TOKENS),
    space=space,
    anchor=anchor,
    apply=apply,
    gates=("guardrails", "quality_non_inferiority"),
    serving_effect="serving.guardrails.check_call",
    estimate="experiments.replay._walk_plan",
    report="`spec.guardrails.*` lines of the policy diff (caps set, changed or removed)",
)
