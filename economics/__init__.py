"""What the fleet costs and what it buys: the cost model (one pricing of every span),
metrics (cost per Green PR, FPY, tier mix, ... per team, repo, family, day), the FinOps
register FIN-01..09, spend lines in time, spend anomalies, the spend forecast and the FOCUS
export. Names load on first use (pandas stays out of ``import economics``).
"""

from __future__ import annotations

from contracts.fronts import lazy_front

_HOME = {
    **dict.fromkeys(("CostLedger", "CostPerGreenPR", "PricedAttempts", "UnitEconomics",
                     "attempt_costs", "build_ledger", "charge", "cost_decomposition",
                     "price_attempts"), "economics.costmodel"),
    **dict.fromkeys(("GROUP_KEYS", "METRIC_COLUMNS", "compute_metrics", "runaway_cap"),
                    "economics.metrics"),
    **dict.fromkeys(("BudgetStatus", "FinOpsTargets", "RegisterEntry", "budget_status",
                     "finops_register", "register_from_frames"), "economics.finops"),
    **dict.fromkeys(("spend_by_period", "spend_lines"), "economics.spend"),
    **dict.fromkeys(("Anomaly", "AnomalyRule", "detect_anomalies", "detect_spend_anomalies",
                     "flag_spikes"), "economics.anomalies"),
    **dict.fromkeys(("SpendForecast", "forecast_series", "forecast_spend",
                     "forecast_team_spend"), "economics.forecast"),
    **dict.fromkeys(("FOCUS_VERSION", "FocusAccount", "build_focus", "check_focus",
                     "focus_rows"), "economics.focus"),
}
__all__ = [
    "FOCUS_VERSION",
    "GROUP_KEYS",
    "METRIC_COLUMNS",
    "Anomaly",
    "AnomalyRule",
    "BudgetStatus",
    "CostLedger",
    "CostPerGreenPR",
    "FinOpsTargets",
    "FocusAccount",
    "PricedAttempts",
    "RegisterEntry",
    "SpendForecast",
    "UnitEconomics",
    "attempt_costs",
    "budget_status",
    "build_focus",
    "build_ledger",
    "charge",
    "check_focus",
    "compute_metrics",
    "cost_decomposition",
    "detect_anomalies",
    "detect_spend_anomalies",
    "finops_register",
    "flag_spikes",
    "focus_rows",
    "forecast_series",
    "forecast_spend",
    "forecast_team_spend",
    "price_attempts",
    "register_from_frames",
    "runaway_cap",
    "spend_by_period",
    "spend_lines",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
