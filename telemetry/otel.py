"""OpenTelemetry SDK set-up for the gateway and the workload driver.

Spans go to an OTLP/HTTP endpoint when one is configured (the argument, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables), and
otherwise to a local JSON-lines file in the ingester's flat form, one span a line:
``{"name", "trace_id", "span_id", "parent_span_id", "start_time_unix_nano",
"end_time_unix_nano", "attributes"}``. Either way a BatchSpanProcessor exports off the
request path.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME as RESOURCE_SERVICE_NAME
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from contracts.errors import PermanentError
from contracts.spans import SERVICE_NAME

__all__ = [
    "JsonLinesSpanExporter",
    "configure_tracing",
    "otlp_endpoint_from_env",
    "set_span_attributes",
    "shutdown_tracing",
    "span_to_flat",
]

_log = logging.getLogger(__name__)
_TRACES_PATH = "/v1/traces"

_lock = threading.Lock()
_provider: TracerProvider | None = None


def span_to_flat(span: ReadableSpan) -> dict[str, Any]:
    """A finished SDK span in the ingester's flat form (ids as lowercase hex)."""
    context = span.get_span_context()
    attributes = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in (span.attributes or {}).items()}
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": attributes,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to a file as flat JSON lines; safe to call from several threads.

    Each export is written with one ``write`` of whole lines under a lock, so lines from
    concurrent exports never interleave; the file is flushed after every export and
    fsynced on shutdown.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = self.path.open("ab")
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            payload = b"".join(orjson.dumps(span_to_flat(s)) + b"\n" for s in spans)
        except TypeError as exc:  # an attribute value orjson cannot encode
            _log.error("dropping %d spans: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            try:
                self._fh.write(payload)
                self._fh.flush()
            except OSError as exc:
                _log.error("could not write spans to %s: %s", self.path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            if not self._closed:
                self._fh.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                _log.error("could not sync %s: %s", self.path, exc)
            finally:
                self._fh.close()


def otlp_endpoint_from_env() -> str | None:
    """The traces endpoint the standard variables name, if any."""
    return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None)


def _traces_url(endpoint: str) -> str:
    """A base URL (``http://collector:4318``) gets the OTLP traces path appended."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


def _exporter(otlp_endpoint: str | None, jsonl_path: Path | None) -> SpanExporter:
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=_traces_url(otlp_endpoint))
    if otlp_endpoint_from_env():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the variables itself (and appends /v1/traces to the generic
        # one as the specification says), along with headers, timeout and certificates.
        return OTLPSpanExporter()
    if jsonl_path is not None:
        return JsonLinesSpanExporter(jsonl_path)
    raise PermanentError(
        "tracing needs an OTLP endpoint (argument or OTEL_EXPORTER_OTLP_ENDPOINT) "
        "or a JSON-lines path")


def configure_tracing(service_name: str = SERVICE_NAME, otlp_endpoint: str | None = None,
                      jsonl_path: Path | str | None = None, *, set_global: bool = True,
                      resource_attributes: Mapping[str, Any] | None = None) -> TracerProvider:
    """A TracerProvider exporting through a BatchSpanProcessor: to OTLP/HTTP when an
    endpoint is configured, else to ``jsonl_path`` as flat JSON lines. A provider set up
    earlier by this function is shut down (flushed) first. ``set_global`` installs it as
    OpenTelemetry's global provider, which OpenTelemetry allows once per process."""
    global _provider
    exporter = _exporter(otlp_endpoint, Path(jsonl_path) if jsonl_path is not None else None)
    resource = Resource.create({**(resource_attributes or {}),
                                RESOURCE_SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    with _lock:
        previous, _provider = _provider, provider
    if previous is not None:
        previous.shutdown()
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    """Flush and shut down the provider ``configure_tracing`` made (no-op if none)."""
    global _provider
    with _lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.force_flush()
        provider.shutdown()


def set_span_attributes(span: trace.Span, attributes: Mapping[str, Any]) -> None:
    """Set attributes from a dict, skipping None values (OpenTelemetry rejects None);
    enum members are written as their values."""
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        span.set_attribute(key, value)
