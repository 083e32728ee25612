"""The FinOps register (FIN-01..FIN-09 of the cost-control practice) and team budgets.

Pure checks over a metrics row (``economics.metrics.compute_metrics`` with no grouping,
or by day alone, so the fleet-wide utilisation figures are filled). Every entry says OK,
BREACH or NO_DATA with the numbers in its message; nothing here raises on missing data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field

from contracts.documents import Strict

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest
    from policies.policy import TeamBudget

__all__ = [
    "BudgetStatus",
    "FinOpsTargets",
    "RegisterEntry",
    "Status",
    "budget_status",
    "finops_register",
    "register_from_frames",
]


class Status(StrEnum):
    OK = "OK"
    BREACH = "BREACH"
    NO_DATA = "NO_DATA"


class FinOpsTargets(Strict):
    """Targets of the register; the defaults are the practice's. Written under ``finops:`` in
    ``autopilot.yaml``. ``cost_per_green_pr_usd`` None reports FIN-01 without judging it."""

    cost_per_green_pr_usd: float | None = Field(default=None, gt=0, description="FIN-01 max")
    fpy_min: float = Field(default=0.70, ge=0, le=1, description="FIN-02")
    gpu_utilisation_min: float = Field(default=0.70, ge=0, le=1, description="FIN-03")
    idle_share_max: float = Field(default=0.10, ge=0, le=1, description="FIN-04")
    cache_hit_rate_min: float = Field(default=0.50, ge=0, le=1, description="FIN-05")
    tier_l_share_max: float = Field(default=0.10, ge=0, le=1, description="FIN-06")
    eval_share_max: float = Field(default=0.40, ge=0, le=1, description="FIN-07")
    spot_share_min: float = Field(
        default=0.0, ge=0, le=1, description="FIN-08; 0 makes it informative only"
    )
    runaway_loops_max: int = Field(default=0, ge=0, description="FIN-09")


@dataclass(frozen=True)
class RegisterEntry:
    id: str
    name: str
    value: float | None
    target: float | None
    comparator: str | None  # ">=", "<=" or None when the entry only reports
    status: Status
    message: str

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["status"] = str(self.status)
        return row


@dataclass(frozen=True)
class _Check:
    id: str
    name: str
    column: str
    target_field: str
    comparator: str
    label: str
    money: bool = False
    no_data: str = "no data in the window"


_CHECKS: tuple[_Check, ...] = (
    _Check("FIN-01", "Cost per Green PR", "cost_per_green_pr", "cost_per_green_pr_usd", "<=",
           "$/Green PR", money=True, no_data="no Green PRs in the window"),
    _Check("FIN-02", "First-pass yield", "fpy", "fpy_min", ">=", "FPY",
           no_data="no task with a serve attempt"),
    _Check("FIN-03", "GPU utilisation", "gpu_utilisation", "gpu_utilisation_min", ">=",
           "GPU utilisation", no_data="nothing provisioned, or no window"),
    _Check("FIN-04", "Idle share", "idle_share", "idle_share_max", "<=", "idle share",
           no_data="nothing provisioned, or no window"),
    _Check("FIN-05", "Cache hit rate", "cache_hit_rate", "cache_hit_rate_min", ">=",
           "cache hit rate", no_data="no calls"),
    _Check("FIN-06", "Tier-L share", "tier_L_share", "tier_l_share_max", "<=", "Tier-L share",
           no_data="no serve attempts"),
    _Check("FIN-07", "Eval share", "eval_share", "eval_share_max", "<=", "eval share",
           no_data="no spend"),
    _Check("FIN-08", "Spot share", "spot_share", "spot_share_min", ">=", "spot share",
           no_data="nothing provisioned"),
    _Check("FIN-09", "Runaway loops", "runaway_loops", "runaway_loops_max", "<=",
           "runaway loops", no_data="no tasks"),
)

_HOLDS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
}
_FAILS_AS = {">=": "<", "<=": ">"}


def _number(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: float, check: _Check) -> str:
    if check.money:
        return f"${value:.4f}"
    if check.column == "runaway_loops":
        return f"{value:.0f}"
    return f"{value:.2f}"


def _row(metrics: Mapping[str, Any] | pd.Series | pd.DataFrame) -> Mapping[str, Any]:
    if isinstance(metrics, pd.DataFrame):
        if len(metrics) != 1:
            raise ValueError(f"the register reads one metrics row (got {len(metrics)})")
        return metrics.iloc[0].to_dict()
    if isinstance(metrics, pd.Series):
        return metrics.to_dict()
    return metrics


def finops_register(metrics: Mapping[str, Any] | pd.Series | pd.DataFrame,
                    targets: FinOpsTargets | None = None) -> list[RegisterEntry]:
    """FIN-01..FIN-09 against ``targets`` for one metrics row (whole window)."""
    targets = targets or FinOpsTargets()
    row = _row(metrics)
    no_tasks = (_number(row.get("tasks")) or 0) == 0
    entries = []
    for check in _CHECKS:
        value = _number(row.get(check.column))
        if check.column == "runaway_loops" and no_tasks:
            value = None
        target = getattr(targets, check.target_field)
        target = None if target is None else float(target)
        label = check.label
        if value is None:
            note = row.get(f"{check.column}_note")
            reason = note if isinstance(note, str) and note else check.no_data
            entries.append(RegisterEntry(check.id, check.name, None, target, check.comparator,
                                         Status.NO_DATA, f"{label}: {reason}"))
            continue
        shown = _fmt(value, check)
        if target is None:
            entries.append(RegisterEntry(check.id, check.name, value, None, None, Status.OK,
                                         f"{label} {shown} (no target: reported only)"))
            continue
        held = _HOLDS[check.comparator](value, target)
        op = check.comparator if held else _FAILS_AS[check.comparator]
        message = f"{label} {shown} {op} target {_fmt(target, check)}"
        if check.column == "spot_share" and target == 0:
            message += " (informative)"
        entries.append(RegisterEntry(check.id, check.name, value, target, check.comparator,
                                     Status.OK if held else Status.BREACH, message))
    return entries


def register_from_frames(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                         fleet: FleetManifest, targets: FinOpsTargets | None = None,
                         **metric_options: Any) -> list[RegisterEntry]:
    """The register over the whole window of the given telemetry frames."""
    from economics.metrics import compute_metrics

    row = compute_metrics(tasks, attempts, calls, fleet, by=[], **metric_options)
    return finops_register(row, targets)


# ------------------------------------------------------------------------ team budgets
@dataclass(frozen=True)
class BudgetStatus:
    team: str
    day: str
    spent_usd: float
    budget_usd: float
    share: float
    alert_level: str  # "none", or the highest level reached in percent: "70", "90", "100"
    exhausted: bool  # spent >= budget: where hard_stop is set, new tasks are refused
    hard_stop: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Shares are computed in floating point; 0.7 * 100 / 100 must reach the 70% level.
_LEVEL_TOLERANCE = 1e-9


def _level_name(level: float) -> str:
    return f"{level * 100:g}"


def budget_status(spend_by_team_day: pd.DataFrame, team_budgets: Mapping[str, TeamBudget], *,
                  spend_column: str | None = None) -> list[BudgetStatus]:
    """Spend against each team's daily budget, one row per budgeted team and day.

    ``spend_by_team_day`` has ``team``, ``day`` and a spend column (``spend_total`` as
    ``compute_metrics(by=["team", "day"])`` writes it, or ``spent_usd``/``spent``); rows of
    one team and day are summed. Teams without a budget are left out.
    """
    if spend_column is None:
        candidates = [c for c in ("spend_total", "spent_usd", "spent")
                      if c in spend_by_team_day.columns]
        if not candidates:
            raise ValueError("spend frame needs a spend_total, spent_usd or spent column")
        spend_column = candidates[0]
    if spend_by_team_day.empty or not team_budgets:
        return []
    budgeted = spend_by_team_day[spend_by_team_day["team"].isin(list(team_budgets))]
    sums = budgeted.groupby(["team", "day"], sort=True)[spend_column].sum(min_count=1)
    rows = []
    for (team, day), spent in sums.items():
        budget = team_budgets[str(team)]
        spent = 0.0 if pd.isna(spent) else float(spent)
        share = spent / budget.usd_per_day
        reached = [lvl for lvl in budget.alert_levels if share >= lvl - _LEVEL_TOLERANCE]
        rows.append(BudgetStatus(
            team=str(team),
            day=str(day),
            spent_usd=spent,
            budget_usd=budget.usd_per_day,
            share=share,
            alert_level=_level_name(max(reached)) if reached else "none",
            exhausted=share >= 1.0 - _LEVEL_TOLERANCE,
            hard_stop=budget.hard_stop,
        ))
    return rows
