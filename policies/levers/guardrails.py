"""Guardrails lever: per-task attempt, spend and token caps (a task over a cap ends
``budget_exceeded`` and goes to human triage). Spend and token caps are searched as
quantiles of the window's per-task values, so they mean the same on any fleet."""

from __future__ import annotations

from typing import Any

from policies.levers._space import LeverContext, Param

__all__ = ["NAME", "QUANTILES", "anchor", "apply", "space"]

NAME = "guardrails"
QUANTILES = {"none": None, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def space(active, ctx: LeverContext) -> dict[str, Param]:
    return {
        "max_attempts_per_task": Param.choice(0, 1, 2, 3, 4, 5, 6),
        "max_usd_per_task": Param.choice(*QUANTILES),
        "max_tokens_per_task": Param.choice(*QUANTILES),
    }


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    g = active.spec.guardrails
    attempts = g.max_attempts_per_task or 0
    return {"max_attempts_per_task": min(attempts, 6),
            "max_usd_per_task": "none", "max_tokens_per_task": "none"}


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    g = active.spec.guardrails.model_dump(mode="json")
    if "max_attempts_per_task" in point:
        g["max_attempts_per_task"] = int(point["max_attempts_per_task"]) or None
    for key, sample, cast in (("max_usd_per_task", ctx.task_usd, float),
                              ("max_tokens_per_task", ctx.task_tokens, int)):
        if key in point:
            q = QUANTILES[point[key]]
            value = cast(ctx.quantile(sample, q)) if q is not None and sample else None
            g[key] = value if value else None
    return active.evolve(author=author, description="guardrails search", guardrails=g)
