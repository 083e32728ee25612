"""Spend anomalies, the spend forecast and the FOCUS export over the telemetry warehouse.

Adapters: each reads a window of the warehouse (and the store where it needs to), calls the
pure functions of ``economics.anomalies``, ``economics.forecast`` and ``economics.focus``,
and shapes plain rows for the CLI, the nightly and reports. No rule lives here.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.errors import TransientError

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest
    from controlplane.settings import StateDir
    from economics.anomalies import Anomaly, AnomalyRule

__all__ = [
    "FOCUS_FORMATS",
    "anomaly_rows",
    "detect_window_anomalies",
    "export_focus",
    "forecast_rows",
    "nightly_anomalies",
    "record_window_anomalies",
]

FOCUS_FORMATS = ("csv", "parquet")
NIGHTLY_LIST = 5  # anomalies the nightly summary names (largest excess first)


def _day(value: str) -> date:
    return date.fromisoformat(value)


def _options(state: StateDir) -> dict[str, Any]:
    return {"default_verifier_cost_usd": state.settings().default_verifier_cost_usd}


def detect_window_anomalies(state: StateDir, fleet: FleetManifest, since: str | None,
                            until: str | None, *,
                            rule: AnomalyRule | None = None) -> list[Anomaly]:
    """Anomalies whose period lies in the window. The ``rule.lookback`` days before
    ``since`` are read as history, so the window's first day has its baseline; without
    ``since`` the whole warehouse is read and judged."""
    from controlplane.views import read_metric_frames
    from economics.anomalies import AnomalyRule, detect_spend_anomalies

    rule = rule or AnomalyRule()
    history_from = since
    if since is not None:
        history_from = (_day(since) - timedelta(days=rule.history_days)).isoformat()
    tasks, attempts, calls = read_metric_frames(state, history_from, until)
    days = sorted(set(tasks["day"].dropna()) | set(attempts["day"].dropna())
                  | set(calls["day"].dropna()))
    if not days:
        return []
    # The grid starts on the first day with telemetry: days before a deployment are not
    # zero-spend history (they would make every first hour look new).
    start = days[0]
    end = (_day(until or days[-1]) + timedelta(days=1)).isoformat()
    return detect_spend_anomalies(tasks, attempts, calls, fleet, rule=rule, since=since,
                                  start=start, end=end, **_options(state))


def anomaly_rows(found: list[Anomaly]) -> list[dict[str, Any]]:
    """Rows for people and machines (ratio None when the baseline is 0)."""
    return [{
        "granularity": a.granularity,
        "scope": a.scope,
        "key": a.key,
        "period_start": a.period_start.isoformat(),
        "spend_usd": round(a.spend_usd, 6),
        "baseline_usd": round(a.baseline_usd, 6),
        "ratio": None if a.ratio is None else round(a.ratio, 2),
        "threshold_usd": round(a.threshold_usd, 6),
        "history": a.history,
    } for a in found]


def record_window_anomalies(state: StateDir, store: Any, fleet: FleetManifest,
                            since: str | None, until: str | None, *, actor: str,
                            rule: AnomalyRule | None = None) -> dict[str, Any]:
    """Detect the window's anomalies and record them in the store (idempotent)."""
    found = detect_window_anomalies(state, fleet, since, until, rule=rule)
    added = store.record_anomalies([a.as_dict() for a in found], actor=actor) if found else []
    return {"detected": len(found), "recorded": len(added), "anomalies": anomaly_rows(found)}


def nightly_anomalies(state: StateDir, store: Any, fleet: FleetManifest, since: str,
                      until: str, *, actor: str) -> dict[str, Any]:
    """The nightly's signal: the window's anomalies recorded, and the largest few named.
    Fail open: an error is reported in the summary and never stops the night (a transient
    one is raised, for the task's retry)."""
    from economics.anomalies import AnomalyRule

    rule = AnomalyRule()
    try:
        found = detect_window_anomalies(state, fleet, since, until, rule=rule)
        added = store.record_anomalies([a.as_dict() for a in found], actor=actor) \
            if found else []
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001 - an observation never blocks the loop
        return {"error": f"{type(exc).__name__}: {exc}"}
    worst = sorted(found, key=lambda a: a.spend_usd - a.baseline_usd, reverse=True)
    return {
        "detected": len(found),
        "recorded": len(added),
        "by_scope": {scope: sum(a.scope == scope for a in found)
                     for scope in sorted({a.scope for a in found})},
        "top": [a.describe() for a in worst[:NIGHTLY_LIST]],
        "rule": f"spend > {rule.ratio:g}x the median of the last {rule.lookback} same-hour "
                f"(or day) values, at least ${rule.min_usd_hour:g}/hour, "
                f"${rule.min_usd_day:g}/day",
    }


def _team_budgets(state: StateDir) -> dict[str, float]:
    """Each budgeted team's dollars per day, from the active policy's guardrails."""
    from store import Store

    store = Store.open(state.store_url())
    try:
        record = store.active_policy()
    finally:
        store.close()
    if record is None:
        return {}
    return {team: b.usd_per_day
            for team, b in record.policy.spec.guardrails.team_budgets.items()}


def forecast_rows(state: StateDir, fleet: FleetManifest, since: str | None, until: str | None,
                  *, horizon: int = 7, level: float = 0.9) -> list[dict[str, Any]]:
    """The next ``horizon`` days of spend per team (from the window's daily spend), with
    the interval and the days until each budgeted team's daily budget is reached."""
    from controlplane.views import read_metric_frames
    from economics.forecast import forecast_team_spend

    tasks, attempts, calls = read_metric_frames(state, since, until)
    if tasks.empty and attempts.empty and calls.empty:
        return []
    # The day grid is the telemetry's own days (first to last): days of the window without
    # any telemetry at either end are not zero-spend history.
    found = forecast_team_spend(tasks, attempts, calls, fleet, team_budgets=_team_budgets(state),
                                horizon=horizon, level=level, **_options(state))
    return [f.as_dict() for f in found]


def export_focus(state: StateDir, fleet: FleetManifest, since: str | None, until: str | None,
                 out: str | Path, fmt: str = "csv") -> dict[str, Any]:
    """Write the window's spend as FOCUS rows (``economics.focus``) to ``out``."""
    from contracts.files import atomic_write_bytes
    from controlplane.views import read_metric_frames
    from economics.focus import FOCUS_VERSION, build_focus, check_focus, focus_csv_frame

    if fmt not in FOCUS_FORMATS:
        raise ValueError(f"format must be one of {FOCUS_FORMATS} (got {fmt!r})")
    tasks, attempts, calls = read_metric_frames(state, since, until)
    frame = build_focus(tasks, attempts, calls, fleet, **_options(state))
    problems = check_focus(frame)
    if problems:  # a bug of the builder, never of the data: refuse to write it
        raise RuntimeError(f"the FOCUS rows break the spec: {'; '.join(problems)}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        data = focus_csv_frame(frame).to_csv(index=False).encode("utf-8")
    else:
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return {
        "path": str(path),
        "format": fmt,
        "focus_version": FOCUS_VERSION,
        "rows": len(frame),
        "billed_usd": float(frame["BilledCost"].sum()) if len(frame) else 0.0,
        "charge_period_start": (frame["ChargePeriodStart"].min().isoformat()
                                if len(frame) else None),
        "charge_period_end": (frame["ChargePeriodEnd"].max().isoformat()
                              if len(frame) else None),
    }
