"""Spend lines and spend anomalies: hand-built windows whose spend per hour is known, so the
baseline (median of the same hour of the last 7 days) and every alert can be checked."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.manifest import FleetManifest
from contracts.tables import TABLES
from economics.anomalies import (
    Anomaly,
    AnomalyRule,
    detect_anomalies,
    detect_spend_anomalies,
    flag_spikes,
    seasonal_baseline,
)
from economics.metrics import compute_metrics
from economics.spend import VERIFIER_LABEL, spend_by_period, spend_lines

NS = 1_000_000_000


def econ(gpus: float) -> dict[str, Any]:
    # $3.60/GPU-hour, 1000 tok/s prefill, 500 tok/s decode: S pays $1e-6 in / $2e-6 out.
    return {"gpus": gpus, "usd_per_gpu_hour": 3.6, "prefill_tokens_per_s": 1000,
            "decode_tokens_per_s": 500}


FLEET = FleetManifest.model_validate({"spec": {
    "pricing": {"cached_input_discount": 0.9},
    "tiers": [
        {"name": "S", "rank": 0, "model": "s",
         "variants": [{"name": "bf16", "weights": "w", "economics": econ(1)}]},
        {"name": "L", "rank": 1, "model": "l",
         "variants": [{"name": "bf16", "weights": "w", "economics": econ(8)}]},
    ]}})


def _ns(when: str) -> int:
    return int(pd.Timestamp(when, tz="UTC").value)


def _table(name: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = TABLES[name]
    data = {c: [r.get(c) for r in rows] for c in columns}
    return pd.DataFrame(data, columns=list(columns)).astype(columns)


def window(charges: list[tuple[str, str, str, str, float]], *,
           calls: list[dict[str, Any]] = ()) -> tuple[pd.DataFrame, ...]:
    """One task per charge (team, family, tier, time, $): one attempt with that explicit
    cost at that time. ``calls``: extra calls (task id, tier, time, tokens) with no attempt."""
    tasks, attempts = [], []
    for i, (team, family, tier, when, usd) in enumerate(charges):
        start = _ns(when)
        day = when[:10]
        tasks.append({"span_id": f"t{i}", "trace_id": "tr", "task_id": f"task{i}", "day": day,
                      "start_ns": start, "end_ns": start + NS, "family": family, "team": team,
                      "repo": "repo", "agent": "a", "outcome": "green",
                      "verifier_passed": True, "verifier_cost_usd": float("nan"),
                      "policy_version": "1", "features": "{}"})
        attempts.append({"span_id": f"a{i}", "trace_id": "tr", "parent_span_id": f"t{i}",
                         "task_id": f"task{i}", "day": day, "start_ns": start,
                         "end_ns": start + NS, "attempt": 1, "tier": tier, "variant": "bf16",
                         "passed": True, "purpose": "serve", "propensity": float("nan"),
                         "cost_usd": usd, "policy_version": "1"})
    call_rows = [{"span_id": f"c{j}", "trace_id": "tr", "parent_span_id": None,
                  "day": c["when"][:10], "start_ns": _ns(c["when"]),
                  "end_ns": _ns(c["when"]) + NS, "attempt": 1, "model": "m",
                  "variant": "bf16", "cached_input_tokens": 0, "cache": "miss",
                  "policy_version": "1", "cost_usd": float("nan"), **c}
                 for j, c in enumerate(calls)]
    for row in call_rows:
        row.pop("when")
    return _table("tasks", tasks), _table("attempts", attempts), _table("calls", call_rows)


def steady(days: int, *, first: str = "2026-11-01", usd: float = 1.0,
           teams=("payments",), family: str = "expr_eval", tier: str = "S"):
    """Every hour of ``days`` days: one charge of ``usd`` per team, at half past."""
    start = pd.Timestamp(first)
    return [(team, family, tier, (start + pd.Timedelta(hours=h, minutes=30)).isoformat(), usd)
            for h in range(24 * days) for team in teams]


# ------------------------------------------------------------------------- spend lines
def test_spend_lines_add_up_to_the_metrics_spend():
    charges = steady(2, teams=("payments", "search"))
    tasks, attempts, calls = window(charges, calls=[
        {"task_id": "task0", "tier": "L", "when": "2026-11-01T05:10:00",
         "input_tokens": 1000, "output_tokens": 500}])
    tasks.loc[0, "verifier_cost_usd"] = 0.25
    lines = spend_lines(tasks, attempts, calls, FLEET)
    total = compute_metrics(tasks, attempts, calls, FLEET)["spend_total"].iloc[0]
    assert lines["usd"].sum() == pytest.approx(total)
    # The explicit attempt cost wins over its call; the call, linked to attempt 1 of task0,
    # adds its tokens to that attempt's line.
    first = lines[(lines["attempts"] == 1) & (lines["team"] == "payments")].iloc[0]
    assert first["usd"] == 1.0 and first["input_tokens"] == 1000 and first["calls"] == 1
    verifier = lines[lines["tier"] == VERIFIER_LABEL]
    assert list(verifier["usd"]) == [0.25] and verifier["tasks"].sum() == 1


def test_an_orphan_call_is_a_serve_line_priced_by_the_cost_model():
    tasks, attempts, calls = window([("payments", "f", "S", "2026-11-01T00:10:00", 0.5)],
                                    calls=[{"task_id": "elsewhere", "tier": "L",
                                            "when": "2026-11-01T03:00:00",
                                            "input_tokens": 1000, "output_tokens": 500}])
    lines = spend_lines(tasks, attempts, calls, FLEET)
    orphan = lines[lines["calls"] == 1].iloc[0]
    # L: 8 GPUs x $3.60/h = $0.008/s; 1 s of prefill + 1 s of decode.
    assert orphan["usd"] == pytest.approx(0.016)
    assert (orphan["team"], orphan["purpose"], orphan["tier"]) == ("(unknown)", "serve", "L")
    assert orphan["list_usd"] == pytest.approx(0.016)


def test_spend_by_period_fills_quiet_hours_with_zeros():
    tasks, attempts, calls = window([("a", "f", "S", "2026-11-01T03:20:00", 2.0),
                                     ("b", "f", "S", "2026-11-02T23:59:00", 1.0)])
    lines = spend_lines(tasks, attempts, calls, FLEET)
    hourly = spend_by_period(lines, by="team", granularity="hour")
    assert len(hourly) == 48 and list(hourly.columns) == ["a", "b"]
    assert hourly["a"].sum() == 2.0 and hourly.loc[pd.Timestamp("2026-11-01T03:00Z"), "a"] == 2.0
    daily = spend_by_period(lines, by="team", granularity="day", end="2026-11-04")
    assert list(daily["b"]) == [0.0, 1.0, 0.0]


# ------------------------------------------------------------------------------ baseline
def test_the_baseline_is_the_median_of_earlier_same_hour_values_only():
    grid = pd.DataFrame({"k": [1.0, 2.0, 10.0, 4.0, 100.0, 6.0]})
    base, history = seasonal_baseline(grid, season=2, lookback=2, min_history=2)
    # Position 0 holds rows 0, 2, 4 (1, 10, 100); row 4's baseline is median(1, 10).
    assert math.isnan(base["k"][0]) and math.isnan(base["k"][2])
    assert base["k"][4] == pytest.approx(5.5) and history["k"][4] == 2
    # Position 1 holds rows 1, 3, 5 (2, 4, 6): row 5 sees 2 and 4, never itself.
    assert base["k"][5] == pytest.approx(3.0)


def test_a_spike_above_three_times_the_baseline_alerts_and_below_does_not():
    index = pd.date_range("2026-11-01", periods=24 * 10, freq="h", tz="UTC")
    grid = pd.DataFrame({"a": 1.0, "b": 1.0, "tiny": 0.01}, index=index)
    spike = index[24 * 8 + 5]
    grid.loc[spike, "a"] = 3.5  # 3.5x: alert
    grid.loc[spike, "b"] = 2.9  # 2.9x: none
    grid.loc[spike, "tiny"] = 0.04  # 4x, but below the $0.05 floor: none
    flagged = flag_spikes(grid, season=24, lookback=7, min_history=3, ratio=3.0, min_usd=0.05)
    assert list(flagged["key"]) == ["a"] and flagged["period"].iloc[0] == spike
    row = flagged.iloc[0]
    assert (row["spend_usd"], row["baseline_usd"], row["threshold_usd"]) == (3.5, 1.0, 3.0)
    assert row["history"] == 7


def test_spend_where_the_baseline_is_zero_alerts_above_the_floor():
    index = pd.date_range("2026-11-01", periods=24 * 5, freq="h", tz="UTC")
    grid = pd.DataFrame({"new": 0.0}, index=index)
    grid.iloc[24 * 4 + 2] = 0.2
    flagged = flag_spikes(grid, season=24, lookback=7, min_history=3, ratio=3.0, min_usd=0.05)
    assert len(flagged) == 1 and flagged["baseline_usd"].iloc[0] == 0.0
    assert flagged["threshold_usd"].iloc[0] == 0.05


def test_no_judgement_before_enough_history():
    index = pd.date_range("2026-11-01", periods=24 * 3, freq="h", tz="UTC")
    grid = pd.DataFrame({"a": 1.0}, index=index)
    grid.iloc[24 * 2 + 1] = 50.0  # day 3: only 2 earlier values for that hour
    assert flag_spikes(grid, season=24, lookback=7, min_history=3, ratio=3.0,
                       min_usd=0.05).empty


# ----------------------------------------------------------------------------- detection
def test_detect_names_the_team_family_and_tier_of_an_hourly_spike():
    charges = steady(9, teams=("payments", "search"))
    charges.append(("search", "list_ops", "L", "2026-11-09T14:40:00", 5.0))
    found = detect_spend_anomalies(*window(charges), FLEET, granularities=("hour",))
    hit = {(a.scope, a.key) for a in found}
    assert hit == {("team", "search"), ("family", "list_ops"), ("tier", "L")}
    assert {a.period_start for a in found} == {pd.Timestamp("2026-11-09T14:00Z")}
    team = next(a for a in found if a.scope == "team")
    assert team.spend_usd == 6.0 and team.baseline_usd == 1.0 and team.ratio == 6.0
    assert "6.0x" in team.describe()
    # The new family and tier have no spend at that hour of earlier days: baseline 0.
    family = next(a for a in found if a.scope == "family")
    assert family.baseline_usd == 0.0 and family.ratio is None


def test_a_day_above_three_times_the_last_seven_days_alerts():
    charges = steady(9)
    day = pd.Timestamp("2026-11-09")
    charges += [("payments", "expr_eval", "S", (day + pd.Timedelta(hours=h)).isoformat(), 3.0)
                for h in range(24)]  # 24 + 72 = 96 = 4x the usual 24
    found = detect_spend_anomalies(*window(charges), FLEET, granularities=("day",),
                                   scopes=("team",))
    assert [(a.period_start, a.spend_usd, a.baseline_usd) for a in found] == [
        (pd.Timestamp("2026-11-09T00:00Z"), 96.0, 24.0)]


def test_since_reports_the_window_only_and_a_steady_window_raises_nothing():
    charges = steady(10)
    charges.append(("payments", "expr_eval", "S", "2026-11-09T03:10:00", 9.0))
    lines = spend_lines(*window(charges), FLEET)
    assert len(detect_anomalies(lines, granularities=("hour",), scopes=("team",))) == 1
    assert detect_anomalies(lines, granularities=("hour",), scopes=("team",),
                            since="2026-11-10") == []
    assert detect_anomalies(spend_lines(*window(steady(10)), FLEET)) == []


def test_the_rule_is_checked():
    with pytest.raises(ValueError, match="ratio"):
        AnomalyRule(ratio=1.0)
    with pytest.raises(ValueError, match="min_history"):
        AnomalyRule(lookback=3, min_history=5)
    with pytest.raises(ValueError, match="scopes"):
        detect_anomalies(spend_lines(*window(steady(1)), FLEET), scopes=("repo",))


def test_an_anomaly_reads_back_as_the_store_wants_it():
    a = Anomaly("hour", "team", "x", pd.Timestamp("2026-11-01T03:00Z"), 3.0, 0.5, 1.5, 7)
    row = a.as_dict()
    assert row["period_start"].tzinfo is not None and row["ratio"] == 6.0
    assert set(row) >= {"granularity", "scope", "key", "spend_usd", "baseline_usd",
                        "threshold_usd", "history"}
    assert np.isclose(a.ratio, 6.0)
