"""Spend anomalies: an hour's (or a day's) spend above 3x its baseline is an alert.

The cost-engineering practice's rule, per team, tier and family. The baseline is robust: the
median of the last ``lookback`` (7) values at the same position of the season, so an hour is
compared with the same hour of the last seven days and a day with the last seven days; it
needs ``min_history`` (3) values before it judges. A period alerts when its spend exceeds
``ratio`` (3) times the baseline and is at least ``min_usd`` (per hour or per day), so tiny
hours never alert; a baseline of 0 (a key with no spend at that hour of late) alerts on any
spend above the floor. The statistics are pandas' own (``shift``, ``rolling``, ``median``).

Pure functions over spend lines (``economics.spend.spend_lines``, priced by the one pricing
function) or over any regular spend grid (``flag_spikes``: the benchmark uses it per minute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from economics.spend import spend_by_period, spend_lines

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "GRANULARITIES",
    "SCOPES",
    "Anomaly",
    "AnomalyRule",
    "detect_anomalies",
    "detect_spend_anomalies",
    "flag_spikes",
    "seasonal_baseline",
]

SCOPES: tuple[str, ...] = ("team", "tier", "family")
# Granularity -> the season's length in periods: an hour is judged against the same hour of
# earlier days (24), a day against the days before it (1).
GRANULARITIES: dict[str, int] = {"hour": 24, "day": 1}


@dataclass(frozen=True)
class AnomalyRule:
    """When a period's spend is an anomaly (module docstring). ``min_usd_hour`` and
    ``min_usd_day`` are absolute floors in dollars: set them to the fleet's scale."""

    ratio: float = 3.0
    lookback: int = 7
    min_history: int = 3
    min_usd_hour: float = 0.05
    min_usd_day: float = 0.50

    def __post_init__(self) -> None:
        if not (self.ratio > 1 and math.isfinite(self.ratio)):
            raise ValueError(f"ratio must be a finite number above 1 (got {self.ratio})")
        if not 1 <= self.min_history <= self.lookback:
            raise ValueError(f"need 1 <= min_history <= lookback (got {self.min_history}, "
                             f"{self.lookback})")
        if self.min_usd_hour < 0 or self.min_usd_day < 0:
            raise ValueError("the spend floors must not be negative")

    def min_usd(self, granularity: str) -> float:
        return self.min_usd_hour if granularity == "hour" else self.min_usd_day

    @property
    def history_days(self) -> int:
        """Days of telemetry before a window that its baselines read."""
        return self.lookback


@dataclass(frozen=True)
class Anomaly:
    """One period of one key whose spend crossed the threshold."""

    granularity: str  # "hour" or "day"
    scope: str  # "team", "tier" or "family"
    key: str
    period_start: pd.Timestamp  # UTC
    spend_usd: float
    baseline_usd: float
    threshold_usd: float
    history: int  # baseline values the median was taken over

    @property
    def ratio(self) -> float | None:
        """Spend over baseline; None when the baseline is 0."""
        return self.spend_usd / self.baseline_usd if self.baseline_usd > 0 else None

    def describe(self) -> str:
        when = (self.period_start.strftime("%Y-%m-%d %H:00Z") if self.granularity == "hour"
                else self.period_start.strftime("%Y-%m-%d"))
        times = f"{self.ratio:.1f}x" if self.ratio is not None else "new spend over"
        return (f"{self.scope} {self.key} {when}: ${self.spend_usd:.4f} is {times} the "
                f"baseline ${self.baseline_usd:.4f} (median of {self.history})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "scope": self.scope,
            "key": self.key,
            "period_start": self.period_start.to_pydatetime(),
            "spend_usd": self.spend_usd,
            "baseline_usd": self.baseline_usd,
            "threshold_usd": self.threshold_usd,
            "ratio": self.ratio,
            "history": self.history,
        }


def seasonal_baseline(wide: pd.DataFrame, *, season: int, lookback: int,
                      min_history: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Median of the previous ``lookback`` values at the same season position, per column.

    ``wide`` is a regular grid (rows in time order, one column per key). Returns the
    baseline (NaN where fewer than ``min_history`` earlier values exist) and how many values
    each baseline was taken over. Row ``t`` never sees itself or anything after it.
    """
    if season < 1:
        raise ValueError(f"season must be at least 1 (got {season})")
    position = np.arange(len(wide)) % season
    baseline = pd.DataFrame(np.nan, index=wide.index, columns=wide.columns)
    history = pd.DataFrame(0, index=wide.index, columns=wide.columns, dtype="int64")
    for p in range(min(season, len(wide))):
        rows = np.flatnonzero(position == p)
        earlier = wide.iloc[rows].shift(1).rolling(lookback, min_periods=min_history)
        baseline.iloc[rows] = earlier.median().to_numpy()
        history.iloc[rows] = earlier.count().fillna(0).to_numpy(dtype=np.int64)
    return baseline, history


def flag_spikes(wide: pd.DataFrame, *, season: int, lookback: int, min_history: int,
                ratio: float, min_usd: float) -> pd.DataFrame:
    """The cells of ``wide`` whose value exceeds ``ratio`` times its seasonal baseline and is
    at least ``min_usd``: one row each (period, key, spend, baseline, threshold, history),
    in time order."""
    columns = ["period", "key", "spend_usd", "baseline_usd", "threshold_usd", "history"]
    if wide.empty or wide.shape[1] == 0:
        return pd.DataFrame(columns=columns)
    baseline, history = seasonal_baseline(wide, season=season, lookback=lookback,
                                          min_history=min_history)
    spend = wide.to_numpy(dtype=np.float64)
    base = baseline.to_numpy(dtype=np.float64)
    threshold = np.maximum(ratio * base, min_usd)
    with np.errstate(invalid="ignore"):
        hit = ~np.isnan(base) & (spend > ratio * base) & (spend >= min_usd)
    rows, cols = np.nonzero(hit)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    return pd.DataFrame({
        "period": wide.index[rows],
        "key": [str(c) for c in wide.columns[cols]],
        "spend_usd": spend[rows, cols],
        "baseline_usd": base[rows, cols],
        "threshold_usd": threshold[rows, cols],
        "history": history.to_numpy()[rows, cols].astype(np.int64),
    }, columns=columns)


def detect_anomalies(lines: pd.DataFrame, *, rule: AnomalyRule | None = None,
                     scopes: Sequence[str] = SCOPES,
                     granularities: Iterable[str] = ("hour", "day"),
                     start: str | pd.Timestamp | None = None,
                     end: str | pd.Timestamp | None = None,
                     since: str | pd.Timestamp | None = None) -> list[Anomaly]:
    """Anomalies of spend lines per scope and granularity, oldest first.

    ``start``/``end`` bound the grid (default: the lines' whole days); periods before
    ``since`` serve as history only and are not reported (read ``rule.lookback`` days before
    a window so its first day has a baseline).
    """
    rule = rule or AnomalyRule()
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"scopes must be among {SCOPES} (got {bad})")
    report_from = None if since is None else _utc(since)
    found: list[Anomaly] = []
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)} "
                             f"(got {granularity!r})")
        for scope in scopes:
            wide = spend_by_period(lines, by=scope, granularity=granularity, start=start,
                                   end=end)
            flagged = flag_spikes(wide, season=GRANULARITIES[granularity],
                                  lookback=rule.lookback, min_history=rule.min_history,
                                  ratio=rule.ratio, min_usd=rule.min_usd(granularity))
            if report_from is not None:
                flagged = flagged[flagged["period"] >= report_from]
            found.extend(
                Anomaly(granularity=granularity, scope=scope, key=row.key,
                        period_start=pd.Timestamp(row.period), spend_usd=float(row.spend_usd),
                        baseline_usd=float(row.baseline_usd),
                        threshold_usd=float(row.threshold_usd), history=int(row.history))
                for row in flagged.itertuples(index=False))
    found.sort(key=lambda a: (a.period_start, a.granularity, a.scope, a.key))
    return found


def detect_spend_anomalies(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                           fleet: FleetManifest, *, rule: AnomalyRule | None = None,
                           default_verifier_cost_usd: float = 0.0,
                           since: str | pd.Timestamp | None = None,
                           start: str | pd.Timestamp | None = None,
                           end: str | pd.Timestamp | None = None,
                           scopes: Sequence[str] = SCOPES,
                           granularities: Iterable[str] = ("hour", "day")) -> list[Anomaly]:
    """Price the window's telemetry, then ``detect_anomalies`` over its spend lines."""
    lines = spend_lines(tasks, attempts, calls, fleet,
                        default_verifier_cost_usd=default_verifier_cost_usd)
    if lines.empty:
        return []
    return detect_anomalies(lines, rule=rule, scopes=scopes, granularities=granularities,
                            start=start, end=end, since=since)


def _utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
