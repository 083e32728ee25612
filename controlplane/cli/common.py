"""What every ``autopilot`` command shares: the context object and table output."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import click

from controlplane.console import emit_table, fmt, json_default
from controlplane.settings import StateDir

__all__ = ["Context", "accept_json_everywhere", "check_day", "emit_table", "fmt", "json_default",
           "weights"]


class Context:
    def __init__(self, state_dir: StateDir, as_json: bool):
        self.state = state_dir
        self.as_json = as_json

    # -- output -------------------------------------------------------------------------
    def emit(self, data: Any, *, title: str | None = None, columns: list[str] | None = None):
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=json_default))
            return
        if isinstance(data, list) and data and isinstance(data[0], dict):
            emit_table(data, title=title, columns=columns)
        elif isinstance(data, dict):
            emit_table([{"field": k, "value": v} for k, v in data.items()], title=title)
        else:
            click.echo(data)

    # -- state ----------------------------------------------------------------------------
    def require_init(self) -> None:
        if not self.state.exists():
            raise click.ClickException(
                f"no autopilot state in {self.state.root}: run `autopilot init` first "
                f"(or pass --state-dir / set AUTOPILOT_HOME)"
            )

    def fleet(self):
        from contracts.manifest import load_fleet

        self.require_init()
        return load_fleet(self.state.fleet_path)

    def store(self):
        from store import Store

        self.require_init()
        return Store.open(self.state.store_url(), anchor_file=self.state.anchors_path)


def weights(text: str | None, *, key=str) -> dict:
    """``"a=2,b=1"`` -> ``{"a": 2.0, "b": 1.0}``; a bad item is refused naming it."""
    out: dict = {}
    for item in filter(None, (text or "").split(",")):
        name, sep, weight = item.partition("=")
        try:
            out[key(name.strip())] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: expected name=weight") from exc
    return out


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_day(ctx: click.Context | None, param: click.Parameter | None,
              value: str | None) -> str | None:
    """Click callback for ``--since``/``--until``: a real calendar day as YYYY-MM-DD, or a
    usage error naming it (``2026-13-01`` is refused, never read as an empty window)."""
    if value is None:
        return None
    text = value.strip()
    try:
        if not _DAY.fullmatch(text):
            raise ValueError("not YYYY-MM-DD")
        date.fromisoformat(text)
    except ValueError as exc:
        reason = "no such day" if _DAY.fullmatch(text) else "expected YYYY-MM-DD"
        raise click.BadParameter(f"{value!r}: {reason} ({exc})", ctx=ctx, param=param) from None
    return text


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    obj = ctx.find_object(Context)
    if value and obj is not None:
        obj.as_json = True


def accept_json_everywhere(group: click.Group) -> None:
    """Give every command below ``group`` its own ``--json`` (the group's ``--json`` stays),
    so ``autopilot --json metrics`` and ``autopilot metrics --json`` are the same; and check
    every ``--since``/``--until`` day of those commands (``check_day``)."""
    for command in group.commands.values():
        names = {o for p in command.params for o in getattr(p, "opts", ())}
        if "--json" not in names:
            command.params.append(click.Option(
                ["--json", "_json_flag"], is_flag=True, expose_value=False,
                callback=_set_json, help="Machine-readable JSON output."))
        for p in command.params:
            if p.name in ("since", "until") and p.callback is None:
                p.callback = check_day
        if isinstance(command, click.Group):
            accept_json_everywhere(command)
