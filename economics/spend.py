"""Spend lines: the window's spend as charges in time, for anomalies, forecasts and FOCUS.

``spend_lines`` prices the window once (``costmodel.build_ledger``, hence the one pricing
function ``price_attempts``) and lays the charges out one line each: every attempt at its
start time (its explicit cost, else the sum of its calls), every call without an attempt
span at its own start, and every task's verifier compute at the task's end. Lines carry the
task's team, repo and family, the attempt's tier, variant and purpose, the charge, what the
same tokens cost at list price (no cache discount), and the tokens. Their sum is the
metrics' ``spend_total`` over the same frames, so every reader adds up to the same dollars.

``spend_by_period`` sums lines per hour or day and per key on a complete grid (a period
without spend is a 0, not a gap). Pure: DataFrames in, DataFrames out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from economics.costmodel import PURPOSES, UNKNOWN_LABEL, build_ledger

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "SPEND_LINE_COLUMNS",
    "VERIFIER_LABEL",
    "period_grid",
    "spend_by_period",
    "spend_lines",
]

VERIFIER_LABEL = "(verifier)"  # tier, variant and purpose of a verifier-compute line
SPEND_LINE_COLUMNS: tuple[str, ...] = (
    "start_ns", "team", "repo", "family", "tier", "variant", "purpose", "usd", "list_usd",
    "input_tokens", "cached_input_tokens", "output_tokens", "calls", "attempts", "tasks",
)
_FREQ = {"hour": "h", "day": "D"}


def _labels(values: pd.Series) -> np.ndarray:
    return values.astype("object").where(values.notna(), UNKNOWN_LABEL).to_numpy(dtype=object)


def _task_labels(tasks: pd.DataFrame, task_row: np.ndarray, column: str) -> np.ndarray:
    """The tasks' ``column`` per task code; UNKNOWN_LABEL for spend whose task is not in the
    window."""
    out = np.full(len(task_row), UNKNOWN_LABEL, dtype=object)
    known = task_row >= 0
    if known.any():
        out[known] = _labels(tasks[column])[task_row[known]]
    return out


def _variants(tiers: np.ndarray, variants: pd.Series, fleet: FleetManifest) -> np.ndarray:
    """The variant that priced each line: its own, else its tier's default (the cost model's
    fallback), else UNKNOWN_LABEL."""
    default = {t.name: t.variant().name for t in fleet.tiers}
    out = variants.astype("object").to_numpy(dtype=object)
    missing = pd.isna(out)
    if missing.any():
        out[missing] = [default.get(t, UNKNOWN_LABEL) for t in tiers[missing]]
    return out


def spend_lines(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                fleet: FleetManifest, *, default_verifier_cost_usd: float = 0.0) -> pd.DataFrame:
    """One line per charge (see the module docstring); columns ``SPEND_LINE_COLUMNS``."""
    ledger = build_ledger(tasks, attempts, calls, fleet,
                          default_verifier_cost_usd=default_verifier_cost_usd)
    priced = ledger.calls
    # What the call's tokens cost at list price: uncached, no response-cache discount; an
    # explicit cost is its own list price.
    call_list = np.where(priced.explicit, priced.cost_usd,
                         np.maximum(priced.uncached_cost_usd, priced.cost_usd))
    labels = {key: _task_labels(tasks, ledger.task_row, key)
              for key in ("team", "repo", "family")}
    n_a = len(attempts)
    linked = ledger.call_attempt >= 0
    to_attempt = ledger.call_attempt[linked]

    def per_attempt(values: np.ndarray) -> np.ndarray:
        return np.bincount(to_attempt, weights=values[linked], minlength=n_a)

    a_tier = _labels(attempts["tier"])
    parts = [pd.DataFrame({
        "start_ns": attempts["start_ns"].to_numpy(dtype=np.int64, na_value=0),
        **{key: values[ledger.attempt_task] for key, values in labels.items()},
        "tier": a_tier,
        "variant": _variants(a_tier, attempts["variant"], fleet),
        "purpose": np.array(PURPOSES, dtype=object)[ledger.attempt_purpose],
        "usd": ledger.attempt_cost_usd,
        "list_usd": np.where(ledger.attempt_explicit, ledger.attempt_cost_usd,
                             per_attempt(call_list)),
        "input_tokens": per_attempt(priced.input_tokens),
        "cached_input_tokens": per_attempt(priced.cached_input_tokens),
        "output_tokens": per_attempt(priced.output_tokens),
        "calls": np.bincount(to_attempt, minlength=n_a),
        "attempts": np.ones(n_a, dtype=np.int64),
        "tasks": np.zeros(n_a, dtype=np.int64),
    })]
    orphan = ~linked
    if orphan.any():
        c_tier = _labels(calls["tier"])[orphan]
        parts.append(pd.DataFrame({
            "start_ns": calls["start_ns"].to_numpy(dtype=np.int64, na_value=0)[orphan],
            **{key: values[ledger.call_task[orphan]] for key, values in labels.items()},
            "tier": c_tier,
            "variant": _variants(c_tier, calls["variant"][orphan], fleet),
            "purpose": PURPOSES[0],  # an untagged call counts as serve, as the gateway's
            "usd": priced.cost_usd[orphan],
            "list_usd": call_list[orphan],
            "input_tokens": priced.input_tokens[orphan],
            "cached_input_tokens": priced.cached_input_tokens[orphan],
            "output_tokens": priced.output_tokens[orphan],
            "calls": 1,
            "attempts": 0,
            "tasks": 0,
        }))
    verifier = ledger.task_verifier_usd
    charged = (ledger.task_row >= 0) & (verifier != 0)
    if charged.any():
        rows = ledger.task_row[charged]
        parts.append(pd.DataFrame({
            "start_ns": tasks["end_ns"].to_numpy(dtype=np.int64, na_value=0)[rows],
            **{key: values[charged] for key, values in labels.items()},
            "tier": VERIFIER_LABEL,
            "variant": VERIFIER_LABEL,
            "purpose": VERIFIER_LABEL,
            "usd": verifier[charged],
            "list_usd": verifier[charged],
            "input_tokens": 0.0,
            "cached_input_tokens": 0.0,
            "output_tokens": 0.0,
            "calls": 0,
            "attempts": 0,
            "tasks": 1,
        }))
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    for name in ("team", "repo", "family", "tier", "variant", "purpose"):
        frame[name] = frame[name].astype("string")
    for name in ("usd", "list_usd", "input_tokens", "cached_input_tokens", "output_tokens"):
        frame[name] = frame[name].astype("float64")
    for name in ("start_ns", "calls", "attempts", "tasks"):
        frame[name] = frame[name].astype("int64")
    return frame[list(SPEND_LINE_COLUMNS)]


def period_grid(start: pd.Timestamp, end: pd.Timestamp, granularity: str) -> pd.DatetimeIndex:
    """Every hour or day from ``start`` (inclusive) to ``end`` (exclusive), in UTC."""
    return pd.date_range(_utc(start), _utc(end), freq=_FREQ[granularity], inclusive="left")


def _utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def spend_by_period(lines: pd.DataFrame, *, by: str | Sequence[str], granularity: str = "hour",
                    start: str | pd.Timestamp | None = None,
                    end: str | pd.Timestamp | None = None,
                    value: str = "usd") -> pd.DataFrame:
    """Spend per period (rows: every hour or day, UTC) and key (columns), zeros filled.

    The grid runs from ``start`` (default: midnight of the first line's day) to ``end``
    (exclusive; default: midnight after the last line's day), so a quiet hour is a 0 and a
    partial day is padded to whole days. ``by`` is one column of the lines (a column per
    value) or several (a column MultiIndex).
    """
    if granularity not in _FREQ:
        raise ValueError(f"granularity must be one of {sorted(_FREQ)} (got {granularity!r})")
    keys = [by] if isinstance(by, str) else list(by)
    stamps = pd.to_datetime(lines["start_ns"].to_numpy(dtype=np.int64), unit="ns", utc=True)
    if start is None or end is None:
        if len(lines) == 0:
            return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"))
        first, last = stamps.min().floor("D"), stamps.max().floor("D") + pd.Timedelta(days=1)
    start = first if start is None else _utc(start)
    end = last if end is None else _utc(end)
    grid = period_grid(start, end, granularity)
    period = stamps.floor(_FREQ[granularity])
    frame = pd.DataFrame({"period": period, value: lines[value].to_numpy(dtype=np.float64)})
    for key in keys:
        frame[key] = lines[key].to_numpy(dtype=object)
    frame = frame[(frame["period"] >= start) & (frame["period"] < end)]
    if frame.empty:
        return pd.DataFrame(index=pd.DatetimeIndex(grid, name="period"), dtype="float64")
    table = frame.groupby(["period", *keys], sort=True)[value].sum().unstack(keys, fill_value=0.0)
    table = table.reindex(grid, fill_value=0.0)
    table.index.name = "period"
    return table.astype("float64")
