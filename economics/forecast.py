"""Spend forecast: the next days of spend per team, with an interval, against budgets.

With two weeks of daily spend or more, the forecast is statsmodels' ETS model (exponential
smoothing as a state-space model: additive errors, a damped additive trend and a weekly
additive season), whose prediction intervals come from the fitted model. With fewer days
than that it falls back, and says so in ``method``: ``seasonal_naive`` (7-13 days: each day
repeats the same weekday of the last week, the interval from the spread of the history) or
``mean`` (1-6 days: the mean day, interval from the spread of the days). Spend is never
negative, so points and bounds are clipped at 0.

A team's budget is per day (``guardrails.team_budgets``); ``days_until_budget`` is the first
forecast day (1 = tomorrow) whose point forecast reaches it, and
``days_until_budget_upper`` the first whose upper bound does (the early warning). Pure:
DataFrames in, dataclasses out; statsmodels loads on first use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from economics.spend import spend_by_period, spend_lines

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "ETS_MIN_DAYS",
    "SpendForecast",
    "forecast_series",
    "forecast_spend",
    "forecast_team_spend",
]

ETS_MIN_DAYS = 14  # two weekly seasons: what the seasonal model needs to start
SEASON = 7
ETS_METHOD = "ets(A,Ad,A,7)"


@dataclass(frozen=True)
class SpendForecast:
    """The next ``len(days)`` days of one key's spend. ``method`` names the model or the
    fallback; ``note`` says why a fallback was taken."""

    key: str
    method: str
    note: str | None
    history_days: int
    level: float
    days: tuple[str, ...]
    point: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    budget_usd_per_day: float | None = None

    @property
    def total(self) -> float:
        return float(sum(self.point))

    @property
    def total_lower(self) -> float:
        return float(sum(self.lower))

    @property
    def total_upper(self) -> float:
        return float(sum(self.upper))

    def _first_at_budget(self, values: tuple[float, ...]) -> int | None:
        if self.budget_usd_per_day is None:
            return None
        for i, v in enumerate(values, start=1):
            if v >= self.budget_usd_per_day:
                return i
        return None

    @property
    def days_until_budget(self) -> int | None:
        """First forecast day (1 = the day after the history) whose point reaches the daily
        budget; None when none within the horizon, or no budget."""
        return self._first_at_budget(self.point)

    @property
    def days_until_budget_upper(self) -> int | None:
        """Likewise for the interval's upper bound."""
        return self._first_at_budget(self.upper)

    def as_dict(self) -> dict[str, Any]:
        return {
            "team": self.key,
            "method": self.method,
            "note": self.note,
            "history_days": self.history_days,
            "level": self.level,
            "days": list(self.days),
            "point": list(self.point),
            "lower": list(self.lower),
            "upper": list(self.upper),
            "total_usd": self.total,
            "total_lower_usd": self.total_lower,
            "total_upper_usd": self.total_upper,
            "budget_usd_per_day": self.budget_usd_per_day,
            "days_until_budget": self.days_until_budget,
            "days_until_budget_upper": self.days_until_budget_upper,
        }


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _clip(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.clip(np.nan_to_num(values, nan=0.0), 0.0, None))


def _ets(y: np.ndarray, horizon: int, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; a failure raises below
        model = ETSModel(pd.Series(y), error="add", trend="add", damped_trend=True, seasonal="add",
                         seasonal_periods=SEASON)
        fit = model.fit(disp=False, maxiter=200)
        frame = fit.get_prediction(start=len(y), end=len(y) + horizon - 1).summary_frame(
            alpha=1 - level)
    point = frame["mean"].to_numpy(dtype=np.float64)
    lower = frame["pi_lower"].to_numpy(dtype=np.float64)
    upper = frame["pi_upper"].to_numpy(dtype=np.float64)
    if not (np.isfinite(point).all() and np.isfinite(lower).all() and np.isfinite(upper).all()):
        raise ValueError("the fitted model forecast non-finite values")
    return point, lower, upper


def _seasonal_naive(y: np.ndarray, horizon: int, z: float):
    last_week = y[-SEASON:]
    point = np.array([last_week[h % SEASON] for h in range(horizon)])
    diffs = y[SEASON:] - y[:-SEASON]
    spread = float(np.std(diffs, ddof=1)) if len(diffs) >= 2 else float(np.std(y, ddof=1))
    return point, point - z * spread, point + z * spread


def _mean(y: np.ndarray, horizon: int, z: float):
    n = len(y)
    spread = float(np.std(y, ddof=1)) * math.sqrt(1 + 1 / n) if n >= 2 else 0.0
    point = np.full(horizon, float(np.mean(y)))
    return point, point - z * spread, point + z * spread


def forecast_series(daily: pd.Series, *, horizon: int = 7, level: float = 0.9,
                    key: str = "", budget_usd_per_day: float | None = None) -> SpendForecast:
    """Forecast one daily spend series (index: consecutive days, in order)."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 (got {horizon})")
    z = _z(level)
    y = daily.to_numpy(dtype=np.float64)
    n = len(y)
    if n:
        last = pd.Timestamp(daily.index[-1])
        days = tuple((last + pd.Timedelta(days=h)).strftime("%Y-%m-%d")
                     for h in range(1, horizon + 1))
    else:
        days = ()
    if n == 0:
        return SpendForecast(key, "none", "no spend history", 0, level, (), (), (), (),
                             budget_usd_per_day)
    constant = float(np.std(y)) == 0.0
    note = None
    if n >= ETS_MIN_DAYS and not constant:
        try:
            point, lower, upper = _ets(y, horizon, level)
            return SpendForecast(key, ETS_METHOD, None, n, level, days, _clip(point),
                                 _clip(lower), _clip(upper), budget_usd_per_day)
        except Exception as exc:  # noqa: BLE001 - any fitting failure falls back, labelled
            note = f"ETS fit failed ({type(exc).__name__}: {exc}); seasonal naive instead"
    if constant:
        method, fn = "mean", _mean
        note = f"{n} day(s) of constant spend: the same day again"
    elif n >= SEASON:
        method, fn = "seasonal_naive", _seasonal_naive
        note = note or (f"{n} days of history (ETS needs {ETS_MIN_DAYS}): each day repeats "
                        "the same weekday of the last week")
    else:
        method, fn = "mean", _mean
        note = (f"{n} day(s) of history (ETS needs {ETS_MIN_DAYS}, the weekday fallback "
                f"{SEASON}): the mean day")
    point, lower, upper = fn(y, horizon, z)
    return SpendForecast(key, method, note, n, level, days, _clip(point), _clip(lower),
                         _clip(upper), budget_usd_per_day)


def forecast_spend(daily_by_key: pd.DataFrame, *, horizon: int = 7, level: float = 0.9,
                   budgets: Mapping[str, float] | None = None) -> list[SpendForecast]:
    """One forecast per column of a daily spend grid (``spend_by_period(granularity="day")``);
    ``budgets`` maps a key to its daily budget in dollars."""
    budgets = dict(budgets or {})
    return [forecast_series(daily_by_key[key], horizon=horizon, level=level, key=str(key),
                            budget_usd_per_day=budgets.get(str(key)))
            for key in daily_by_key.columns]


def forecast_team_spend(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                        fleet: FleetManifest, *, team_budgets: Mapping[str, Any] | None = None,
                        horizon: int = 7, level: float = 0.9,
                        default_verifier_cost_usd: float = 0.0,
                        start: str | pd.Timestamp | None = None,
                        end: str | pd.Timestamp | None = None) -> list[SpendForecast]:
    """Price the window, sum spend per team and day, forecast each team.

    ``team_budgets`` maps a team to a ``policies.policy.TeamBudget`` (or a number of dollars
    per day); ``start``/``end`` bound the day grid (default: the window's whole days).
    """
    lines = spend_lines(tasks, attempts, calls, fleet,
                        default_verifier_cost_usd=default_verifier_cost_usd)
    if lines.empty:
        return []
    daily = spend_by_period(lines, by="team", granularity="day", start=start, end=end)
    budgets = {str(team): float(getattr(b, "usd_per_day", b))
               for team, b in (team_budgets or {}).items()}
    return forecast_spend(daily, horizon=horizon, level=level, budgets=budgets)
