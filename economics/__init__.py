"""What the fleet costs and what it buys: the cost model (one pricing of every span),
metrics (cost per Green PR, FPY, tier mix, ... per team, repo, family, day) and the FinOps
register FIN-01..09. Names load on first use (pandas stays out of ``import economics``).
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
}
__all__ = [
    "GROUP_KEYS",
    "METRIC_COLUMNS",
    "BudgetStatus",
    "CostLedger",
    "CostPerGreenPR",
    "FinOpsTargets",
    "PricedAttempts",
    "RegisterEntry",
    "UnitEconomics",
    "attempt_costs",
    "budget_status",
    "build_ledger",
    "charge",
    "compute_metrics",
    "cost_decomposition",
    "finops_register",
    "price_attempts",
    "register_from_frames",
    "runaway_cap",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
