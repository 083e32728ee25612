"""Schemas of the three normalised telemetry tables (tasks, attempts, calls).

The ingester writes exactly these columns (as Parquet, partitioned by ``day``) and every
reader (cost model, metrics, estimator) relies on them. ``features`` is a JSON object of
the task's ``autopilot.feature.*`` attributes with the prefix removed.
"""

from __future__ import annotations

__all__ = ["ATTEMPT_COLUMNS", "CALL_COLUMNS", "TABLES", "TASK_COLUMNS"]

# column -> pandas/arrow dtype name.  Nullable columns use pandas nullable dtypes.
TASK_COLUMNS: dict[str, str] = {
    "span_id": "string",
    "trace_id": "string",
    "task_id": "string",
    "day": "string",  # YYYY-MM-DD (UTC) of start_time
    "start_ns": "int64",
    "end_ns": "int64",
    "family": "string",
    "team": "string",
    "repo": "string",
    "agent": "string",
    "outcome": "string",  # conventions.Outcome
    "verifier_passed": "boolean",
    "review_accepted": "boolean",  # <NA> when no reviewer is recorded
    "verifier_cost_usd": "float64",  # NaN when absent
    "policy_version": "string",
    "features": "string",  # JSON object
}

ATTEMPT_COLUMNS: dict[str, str] = {
    "span_id": "string",
    "trace_id": "string",
    "parent_span_id": "string",
    "task_id": "string",
    "day": "string",
    "start_ns": "int64",
    "end_ns": "int64",
    "attempt": "int64",
    "tier": "string",
    "variant": "string",
    "adapter": "string",  # <NA> when none
    "passed": "boolean",
    "purpose": "string",  # conventions.Purpose
    "propensity": "float64",  # NaN when not logged
    "cost_usd": "float64",  # NaN unless the span carries an explicit cost
    "policy_version": "string",
}

CALL_COLUMNS: dict[str, str] = {
    "span_id": "string",
    "trace_id": "string",
    "parent_span_id": "string",
    "task_id": "string",
    "day": "string",
    "start_ns": "int64",
    "end_ns": "int64",
    "attempt": "int64",
    "model": "string",
    "tier": "string",
    "variant": "string",
    "adapter": "string",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cached_input_tokens": "int64",
    "cache": "string",  # conventions.CacheStatus
    "policy_version": "string",
    "cost_usd": "float64",  # NaN unless explicit
}

TABLES: dict[str, dict[str, str]] = {
    "tasks": TASK_COLUMNS,
    "attempts": ATTEMPT_COLUMNS,
    "calls": CALL_COLUMNS,
}
