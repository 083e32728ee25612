"""Tables for people: the one way the CLI, the demo and the views print rows."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["emit_table", "fmt", "json_default", "terminal_width"]


def json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.2f}"
        return f"{value:.4g}"
    return str(value)


def emit_table(rows: list[dict[str, Any]], *, title: str | None, columns: list[str] | None = None):
    from rich.console import Console
    from rich.table import Table

    columns = columns or list(rows[0].keys())
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    Console(width=terminal_width()).print(table)


def terminal_width(fallback: int = 120) -> int:
    """The terminal's width (``$COLUMNS`` first); ``fallback`` when output is no terminal."""
    import shutil

    return max(shutil.get_terminal_size(fallback=(fallback, 24)).columns, 40)
