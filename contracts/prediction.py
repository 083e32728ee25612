"""What a proposal predicts: the one record the nightly writes and approvals, verify,
reports and the CLI read (never by string key).

Relative deltas are fractions (-0.19 is 19% cheaper per Green PR); every ``*_ci`` is the
(low, high) interval at ``level`` (e.g. 0.9). ``support`` is the share of the candidate's
expected attempts the telemetry supports; ``risk`` summarises it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from contracts.documents import Strict

__all__ = ["ExplorationBudget", "Interval", "Prediction", "Risk"]

Risk = Literal["low", "medium", "high"]
Interval = tuple[float, float]


class ExplorationBudget(Strict):
    """What an exploration change buys and spends: shadow attempts at ``rate`` on ``tiers``
    for ``families``, priced at ``usd_per_day`` against the owner's ``budget_usd_per_day``."""

    tiers: list[str]
    families: list[str]
    rate: float = Field(ge=0, le=1)
    usd_per_day: float = Field(ge=0)
    budget_usd_per_day: float = Field(ge=0)
    reason: str = ""
    blocked: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return self.usd_per_day <= self.budget_usd_per_day * (1 + 1e-9)


class Prediction(Strict):
    lever: str | None = None
    risk: Risk = Field(default="high", description="high when nothing says otherwise")
    level: float | None = Field(default=None, gt=0, lt=1)
    support: float | None = Field(default=None, ge=0, le=1)
    cost_per_green_pr_rel_delta: float | None = None
    cost_per_green_pr_rel_delta_ci: Interval | None = None
    fpy_delta: float | None = None
    fpy_delta_ci: Interval | None = None
    green_prs_rel_delta: float | None = None
    green_prs_rel_delta_ci: Interval | None = None
    cost_per_green_pr: float | None = None
    cost_per_green_pr_ci: Interval | None = None
    fpy: float | None = None
    active_cost_per_green_pr: float | None = None
    active_fpy: float | None = None
    exploration: ExplorationBudget | None = None

    @model_validator(mode="before")
    @classmethod
    def _earlier_shape(cls, data: Any) -> Any:
        # Distillation proposals recorded before this model named the cost interval
        # ``interval``; read them as the one shape.
        if isinstance(data, Mapping) and "interval" in data:
            data = dict(data)
            interval = data.pop("interval")
            if interval and None not in interval:
                data.setdefault("cost_per_green_pr_rel_delta_ci", interval)
        return data

    def record(self) -> dict[str, Any]:
        """The JSON the store keeps (unset figures left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def figures(self) -> list[tuple[str, float | None, Interval | None]]:
        """(name, point, interval) for every figure predicted, in reading order."""
        names = ("cost_per_green_pr_rel_delta", "green_prs_rel_delta", "fpy_delta",
                 "cost_per_green_pr", "fpy", "active_cost_per_green_pr", "active_fpy")
        out = []
        for name in names:
            point = getattr(self, name)
            if point is not None:
                out.append((name, point, getattr(self, f"{name}_ci", None)))
        return out
