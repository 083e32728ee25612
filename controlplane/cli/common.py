"""What every ``autopilot`` command shares: the context object and table output."""

from __future__ import annotations

import json
from typing import Any

import click

from controlplane.console import emit_table, fmt, json_default
from controlplane.settings import StateDir

__all__ = ["Context", "emit_table", "fmt", "json_default", "weights"]


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
        return Store.open(self.state.store_url())


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
