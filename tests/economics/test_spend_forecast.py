"""The spend forecast: statsmodels' ETS on two weeks or more, labelled fallbacks below that,
intervals that hold the point, and the day a budget is reached."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from economics.forecast import ETS_MIN_DAYS, forecast_series, forecast_spend


def daily(values, first: str = "2026-11-02") -> pd.Series:  # a Monday
    return pd.Series(np.asarray(values, dtype=float),
                     index=pd.date_range(first, periods=len(values), freq="D", tz="UTC"))


def weekly(days: int, *, level: float = 10.0, trend: float = 0.0, weekend: float = 0.4,
           noise: float = 0.0, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2026-11-02", periods=days, freq="D", tz="UTC")
    shape = np.where(index.day_of_week >= 5, weekend, 1.0)
    values = (level + trend * np.arange(days)) * shape + rng.normal(0, noise, days)
    return pd.Series(values, index=index)


def test_two_weeks_and_more_use_exponential_smoothing_with_an_interval():
    history = weekly(35, trend=0.1, noise=0.2)
    truth = weekly(42, trend=0.1)[35:].to_numpy()
    f = forecast_series(history, horizon=7, level=0.9)
    assert f.method == "ets(A,Ad,A,7)" and f.note is None and f.history_days == 35
    assert f.days == tuple(d.strftime("%Y-%m-%d") for d in
                           pd.date_range("2026-12-07", periods=7, freq="D"))
    point, lower, upper = map(np.array, (f.point, f.lower, f.upper))
    assert (lower <= point).all() and (point <= upper).all() and (upper > lower).all()
    # The weekly shape and the trend are learnt: within 10% of the noise-free truth.
    assert np.abs(point / truth - 1).max() < 0.10
    assert f.total == pytest.approx(point.sum())


def test_one_to_two_weeks_repeat_the_same_weekday_labelled():
    history = weekly(10, noise=0.0)
    history.iloc[-7:] += np.arange(7)  # last week: 10, 11, 12, 4+3, ...
    f = forecast_series(history, horizon=9)
    assert f.method == "seasonal_naive" and f.history_days == 10
    assert "ETS needs 14" in f.note
    last_week = history.to_numpy()[-7:]
    assert f.point == pytest.approx([*last_week, *last_week[:2]])


def test_under_a_week_forecasts_the_mean_day():
    f = forecast_series(daily([1.0, 2.0, 3.0]), horizon=3)
    assert f.method == "mean" and f.point == pytest.approx((2.0, 2.0, 2.0))
    assert all(lo < 2.0 < hi for lo, hi in zip(f.lower, f.upper, strict=True))
    one = forecast_series(daily([4.0]), horizon=2)
    assert one.point == (4.0, 4.0) and one.lower == one.upper == (4.0, 4.0)


def test_no_history_no_forecast_and_bounds_never_go_negative():
    assert forecast_series(daily([]), horizon=3).method == "none"
    f = forecast_series(daily([0.0, 5.0, 0.0, 0.1]), horizon=2)
    assert min(f.lower) == 0.0


def test_a_constant_history_is_the_same_day_again():
    f = forecast_series(daily([2.0] * (ETS_MIN_DAYS + 2)), horizon=2)
    assert f.method == "mean" and f.point == (2.0, 2.0) and "constant" in f.note


def test_days_until_the_budget_from_the_point_and_from_the_upper_bound():
    history = daily([10.0, 12.0, 14.0])  # mean 12, sd 2: the 90% interval ~ 12 +- 3.8
    f = forecast_series(history, horizon=5, budget_usd_per_day=13.0)
    assert f.days_until_budget is None and f.days_until_budget_upper == 1
    g = forecast_series(history, horizon=5, budget_usd_per_day=11.0)
    assert g.days_until_budget == 1
    rising = forecast_series(weekly(28, trend=1.0, weekend=1.0, noise=0.1), horizon=7,
                             budget_usd_per_day=40.0)
    assert rising.method.startswith("ets") and rising.days_until_budget is not None
    assert 1 <= rising.days_until_budget <= 7
    assert rising.days_until_budget_upper <= rising.days_until_budget
    assert forecast_series(history, horizon=3).days_until_budget is None  # no budget


def test_per_team_forecasts_carry_their_budgets():
    grid = pd.DataFrame({"payments": weekly(14, noise=0.3).to_numpy(),
                         "search": weekly(14, level=3.0, noise=0.1, seed=2).to_numpy()},
                        index=pd.date_range("2026-11-02", periods=14, freq="D", tz="UTC"))
    found = forecast_spend(grid, horizon=7, budgets={"payments": 5.0})
    assert [f.key for f in found] == ["payments", "search"]
    assert found[0].budget_usd_per_day == 5.0 and found[1].budget_usd_per_day is None
    row = found[0].as_dict()
    assert row["team"] == "payments" and len(row["point"]) == 7 and row["days_until_budget"] == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="level"):
        forecast_series(daily([1.0]), level=1.5)
    with pytest.raises(ValueError, match="horizon"):
        forecast_series(daily([1.0]), horizon=0)
