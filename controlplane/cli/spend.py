"""``autopilot anomalies`` and ``autopilot export focus``: spend seen from FinOps' side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from controlplane.cli.common import Context

__all__ = ["COMMANDS", "anomalies", "export"]

ACTOR = "autopilot-cli"
_COLUMNS = ["granularity", "scope", "key", "period_start", "spend_usd", "baseline_usd", "ratio",
            "history"]


def _window(fn):
    fn = click.option("--since", help="First day (YYYY-MM-DD), inclusive.")(fn)
    fn = click.option("--until", help="Last day (YYYY-MM-DD), inclusive.")(fn)
    return fn


def _as_day(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a day (YYYY-MM-DD)",
                                 param_hint=what) from exc


@click.command()
@_window
@click.option("--ratio", type=float, default=3.0, show_default=True,
              help="Alert when spend exceeds this multiple of its baseline.")
@click.option("--lookback", type=int, default=7, show_default=True,
              help="Same-hour (or day) values the baseline median is taken over.")
@click.option("--min-usd-hour", type=float, default=0.05, show_default=True,
              help="An hour below this spend never alerts.")
@click.option("--min-usd-day", type=float, default=0.50, show_default=True,
              help="A day below this spend never alerts.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record what is found in the store (idempotent).")
@click.option("--recorded", is_flag=True,
              help="List the anomalies the store holds for the window instead of detecting.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_obj
def anomalies(obj: Context, since: str | None, until: str | None, ratio: float, lookback: int,
              min_usd_hour: float, min_usd_day: float, record: bool, recorded: bool,
              as_json: bool) -> None:
    """Spend anomalies per team, tier and family: an hour (or day) above 3x its baseline,
    the median of the same hour of the last 7 days."""
    from controlplane.spend import anomaly_rows, detect_window_anomalies
    from economics.anomalies import AnomalyRule

    obj.as_json = obj.as_json or as_json
    if recorded:
        start, end = _as_day(since, "--since"), _as_day(until, "--until")
        store = obj.store()
        try:
            rows = [r.as_dict() for r in store.list_anomalies(
                since=start, until=None if end is None else end + timedelta(days=1))]
        finally:
            store.close()
        if obj.as_json:
            obj.emit({"anomalies": rows})
        elif rows:
            obj.emit(rows, title="recorded spend anomalies", columns=_COLUMNS)
        else:
            obj.emit("no anomalies recorded in this window")
        return
    _as_day(since, "--since")
    _as_day(until, "--until")
    try:
        rule = AnomalyRule(ratio=ratio, lookback=lookback, min_history=min(3, lookback),
                           min_usd_hour=min_usd_hour, min_usd_day=min_usd_day)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    found = detect_window_anomalies(obj.state, obj.fleet(), since, until, rule=rule)
    added = 0
    if record and found:
        store = obj.store()
        try:
            added = len(store.record_anomalies([a.as_dict() for a in found], actor=ACTOR))
        finally:
            store.close()
    rows = anomaly_rows(found)
    if obj.as_json:
        obj.emit({"detected": len(found), "recorded": added, "anomalies": rows})
        return
    if not rows:
        obj.emit("no spend anomalies in this window")
        return
    obj.emit(rows, title=f"spend anomalies ({len(rows)}; {added} newly recorded)",
             columns=_COLUMNS)


@click.group()
def export() -> None:
    """Export the fleet's figures for other tools."""


@export.command("focus")
@_window
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="File to write.")
@click.pass_obj
def export_focus_cmd(obj: Context, since: str | None, until: str | None, fmt: str,
                     out: str) -> None:
    """The window's spend in FOCUS 1.1 (FinOps Open Cost and Usage Specification): one row
    per hour per tier variant and team, repo, family and purpose; tags carry them."""
    from controlplane.spend import export_focus

    _as_day(since, "--since")
    _as_day(until, "--until")
    result = export_focus(obj.state, obj.fleet(), since, until, out, fmt)
    obj.emit(result, title="FOCUS export")


COMMANDS = [anomalies, export]
