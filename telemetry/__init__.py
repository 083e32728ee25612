"""Telemetry: the span contract, the normalised tables, SDK set-up and the ingester.

Importing this package stays light: the names below that need pyarrow, pandas or the
OpenTelemetry SDK are loaded on first use (``contracts.spans`` and
``.tables`` import nothing heavy). Span files are read and validated by ``parsing``,
stored and read back by ``warehouse``; ``ingest`` runs the two (``ingest_paths``);
``receiver`` takes OTLP/HTTP export requests into the same path (``OtlpReceiver``).
"""

from __future__ import annotations

from contracts.fronts import lazy_front

_PARSING = ("Reason", "Rejection", "check_span")
_WAREHOUSE = ("compact_partition", "list_days", "read_table")
_INGEST = ("IngestReport", "TelemetryWarehouse", "ingest_paths")
_RECEIVER = ("OtlpReceiver", "ReceiverServer")
_OTEL = ("JsonLinesSpanExporter", "configure_tracing", "set_span_attributes",
         "shutdown_tracing", "span_to_flat")
_HOME = {**dict.fromkeys(_PARSING, "telemetry.parsing"),
         **dict.fromkeys(_WAREHOUSE, "telemetry.warehouse"),
         **dict.fromkeys(_INGEST, "telemetry.ingest"),
         **dict.fromkeys(_OTEL, "telemetry.otel"),
         **dict.fromkeys(_RECEIVER, "telemetry.receiver")}

__all__ = [
    "IngestReport",
    "JsonLinesSpanExporter",
    "OtlpReceiver",
    "Reason",
    "ReceiverServer",
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
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
