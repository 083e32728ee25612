"""Telemetry: the span contract, the normalised tables, SDK set-up and the ingester.

Importing this package stays light: the names below that need pyarrow, pandas or the
OpenTelemetry SDK are loaded on first use (``controlplane.telemetry.conventions`` and
``.tables`` import nothing heavy).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_INGEST = ("IngestReport", "Reason", "Rejection", "TelemetryWarehouse", "check_span",
           "compact_partition", "ingest_paths", "list_days", "read_table")
_OTEL = ("JsonLinesSpanExporter", "configure_tracing", "set_span_attributes",
         "shutdown_tracing", "span_to_flat")
_HOME = {**dict.fromkeys(_INGEST, "controlplane.telemetry.ingest"),
         **dict.fromkeys(_OTEL, "controlplane.telemetry.otel")}

__all__ = [
    "IngestReport",
    "JsonLinesSpanExporter",
    "Reason",
    "Rejection",
    "TelemetryWarehouse",
    "check_span",
    "compact_partition",
    "configure_tracing",
    "ingest_paths",
    "list_days",
    "read_table",
    "set_span_attributes",
    "shutdown_tracing",
    "span_to_flat",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
