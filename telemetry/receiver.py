"""The OTLP/HTTP receiver: ``POST /v1/traces`` into the same ingest path as span files.

The OpenTelemetry Collector's ``otlphttp`` exporter (or any SDK's OTLP/HTTP exporter) is
the client. A request body is an ``ExportTraceServiceRequest``, binary protobuf
(``application/x-protobuf``) or OTLP/JSON (``application/json``), optionally gzipped
(``Content-Encoding: gzip``). A protobuf request is turned into the OTLP/JSON shape the
file reader already parses (ids as lowercase hex), so there is one parser.

What happens to a request:

1. It is judged at once with the ingester's rules (``parsing.read_otlp_request``), so the
   answer can say how many spans were refused: 200 with an ``ExportTraceServiceResponse``
   whose ``partial_success.rejected_spans`` and ``error_message`` name the quarantined
   ones (the good spans beside them are kept); 400 for a body that does not decode, 413
   for one larger than ``max_body_bytes`` (before or after gzip), 415 for another content
   type or encoding, 503 (retry) when it cannot be written down. Error bodies are a
   ``google.rpc.Status``, as the OTLP/HTTP specification asks.
2. It is appended, as one OTLP/JSON line, to a spool file under
   ``<telemetry root>/_otlp_spool/`` before the answer goes out.
3. A flush hands the spool files to ``ingest.ingest_paths``: the very path ``autopilot
   ingest`` takes, so every span ends stored, a duplicate, ignored or quarantined (with
   its reason, in ``<root>/quarantine/``), counted in an ``IngestReport``. A flush runs
   every ``flush_seconds``, as soon as ``flush_spans`` spans or ``flush_bytes`` bytes are
   waiting, and on ``close``. With ``max_files_per_day`` > 1 a flush appends one file per
   touched table and day (the partition is compacted once it would hold more), so many
   small requests make one file per flush, never one per request.

Crash safety: spool files are removed only after their flush stored them; a receiver
that starts finds the files a crashed one left (each live spool file is held under an
advisory lock, so a second receiver on the same root never takes another's) and flushes
them first. Storing is idempotent by span id, so a spool flushed twice (a crash between
the store and the removal) stores nothing twice; only its quarantine records repeat.

``OtlpReceiver.app()`` is a Starlette application, mountable in another ASGI app;
``ReceiverServer`` runs one with uvicorn on a thread; ``autopilot receive`` runs it in the
foreground. There is no authentication: keep it on loopback (the default) and put the
Collector beside it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import math
import os
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self

import orjson

from contracts.errors import TransientError
from contracts.spans import SpanLimits
from telemetry.ingest import IngestReport, ingest_paths
from telemetry.parsing import Bounds, Normalised, read_otlp_request

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "SPOOL_DIR",
    "TRACES_PATH",
    "OtlpHttpError",
    "OtlpReceiver",
    "ReceiverServer",
    "Reply",
    "decode_export_request",
    "proto_request_to_json",
]

_log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
DEFAULT_PORT = 4318
DEFAULT_MAX_BODY_BYTES = 20 << 20  # the Collector's own OTLP receiver default
SPOOL_DIR = "_otlp_spool"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
# google.rpc.Code values
_INVALID_ARGUMENT, _RESOURCE_EXHAUSTED, _UNAVAILABLE = 3, 8, 14
_STATUS_CODE = {400: _INVALID_ARGUMENT, 413: _RESOURCE_EXHAUSTED, 415: _INVALID_ARGUMENT,
                503: _UNAVAILABLE}


class OtlpHttpError(Exception):
    """A request the receiver refuses: the HTTP status and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ------------------------------------------------------------------------------ decoding
def _any_value(value: Any) -> dict[str, Any]:
    """An OTLP ``AnyValue`` message in OTLP/JSON's shape."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": value.string_value}
    if kind == "int_value":
        return {"intValue": value.int_value}
    if kind == "double_value":
        v = value.double_value
        if math.isfinite(v):
            return {"doubleValue": v}
        return {"doubleValue": "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")}
    if kind == "bool_value":
        return {"boolValue": value.bool_value}
    if kind == "array_value":
        return {"arrayValue": {"values": [_any_value(v) for v in value.array_value.values]}}
    if kind == "kvlist_value":
        return {"kvlistValue": {"values": _attributes(value.kvlist_value.values)}}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
    return {}


def _attributes(kvs: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": _any_value(kv.value)} for kv in kvs]


def proto_request_to_json(request: Any) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` message as the OTLP/JSON object the file exporter
    writes (ids as lowercase hex, as OTLP/JSON has them; not proto3 JSON's base64)."""
    resources = []
    for rs in request.resource_spans:
        scopes = []
        for ss in rs.scope_spans:
            spans = []
            for sp in ss.spans:
                span: dict[str, Any] = {
                    "traceId": sp.trace_id.hex(),
                    "spanId": sp.span_id.hex(),
                    "name": sp.name,
                    "kind": sp.kind,
                    "startTimeUnixNano": sp.start_time_unix_nano,
                    "endTimeUnixNano": sp.end_time_unix_nano,
                    "attributes": _attributes(sp.attributes),
                }
                if sp.parent_span_id:
                    span["parentSpanId"] = sp.parent_span_id.hex()
                if sp.status.code or sp.status.message:
                    span["status"] = {"code": sp.status.code, "message": sp.status.message}
                spans.append(span)
            scopes.append({"scope": {"name": ss.scope.name, "version": ss.scope.version},
                           "spans": spans})
        resources.append({"resource": {"attributes": _attributes(rs.resource.attributes)},
                          "scopeSpans": scopes})
    return {"resourceSpans": resources}


def _media_type(content_type: str | None) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _PROTOBUF_TYPES:
        return PROTOBUF
    if media == JSON:
        return JSON
    raise OtlpHttpError(415, f"unsupported content type {content_type!r}; send {PROTOBUF} "
                             f"or {JSON}")


def _check_encoding(content_encoding: str | None) -> bool:
    """Whether the body is gzipped; another encoding is refused (415)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return False
    if encoding == "gzip":
        return True
    raise OtlpHttpError(415, f"unsupported content encoding {content_encoding!r}; send gzip "
                             "or none")


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    """A gzip body (one member or several) inflated to at most ``max_bytes``."""
    out = bytearray()
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise OtlpHttpError(413, f"body larger than max_body_bytes={max_bytes:,} "
                                         "once decompressed")
            if not inflater.eof:
                raise OtlpHttpError(400, "truncated gzip body")
            data = inflater.unused_data
    except zlib.error as exc:
        raise OtlpHttpError(400, f"body is not valid gzip: {exc}") from None
    return bytes(out)


def decode_export_request(body: bytes, content_type: str | None,
                          content_encoding: str | None = None, *,
                          max_bytes: int = DEFAULT_MAX_BODY_BYTES
                          ) -> tuple[dict[str, Any], bytes, str]:
    """One request body as (the OTLP/JSON request, its one-line JSON text, the media type
    to answer in). Raises ``OtlpHttpError`` (400, 413 or 415) for a body it cannot take."""
    media = _media_type(content_type)
    gzipped = _check_encoding(content_encoding)
    if len(body) > max_bytes:
        raise OtlpHttpError(413, f"body of {len(body):,} bytes is larger than "
                                 f"max_body_bytes={max_bytes:,}")
    if gzipped:
        body = _gunzip(body, max_bytes)
    if media == PROTOBUF:
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        try:
            message = ExportTraceServiceRequest.FromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise OtlpHttpError(400, f"body is not an ExportTraceServiceRequest: {exc}") from None
        request = proto_request_to_json(message)
    else:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OtlpHttpError(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise OtlpHttpError(400, "body must be a JSON object (an ExportTraceServiceRequest)")
        # Every field of a protobuf message is optional: {} is an empty request.
        request.setdefault("resourceSpans", [])
    try:
        raw = orjson.dumps(request)
    except (TypeError, orjson.JSONEncodeError) as exc:  # nested past orjson's limit
        raise OtlpHttpError(400, f"request cannot be re-encoded: {exc}") from None
    return request, raw, media


# ------------------------------------------------------------------------------ answers
@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body and its media type (and Retry-After for a 503)."""

    status: int
    body: bytes
    media_type: str
    retry_after_s: int | None = None


def _success(media: str, rejected: int, message: str) -> Reply:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media == PROTOBUF:
        return Reply(200, response.SerializeToString(), PROTOBUF)
    from google.protobuf.json_format import MessageToDict

    return Reply(200, orjson.dumps(MessageToDict(response)), JSON)


def _failure(media: str, status: int, message: str) -> Reply:
    from google.rpc.status_pb2 import Status

    code = _STATUS_CODE.get(status, _INVALID_ARGUMENT)
    retry = 5 if status == 503 else None
    if media == JSON:
        return Reply(status, orjson.dumps({"code": code, "message": message}), JSON, retry)
    return Reply(status, Status(code=code, message=message).SerializeToString(), PROTOBUF,
                 retry)


def _rejection_message(quarantine: list[dict[str, Any]]) -> str:
    reasons = Counter(q["reason"] for q in quarantine)
    listed = ", ".join(f"{reason} ({n})" for reason, n in sorted(reasons.items()))
    return (f"{len(quarantine)} span(s) quarantined: {listed}; first: "
            f"{quarantine[0]['message']}")[:1000]


# ----------------------------------------------------------------------------- receiver
def _sum_into(total: dict[str, int], part: dict[str, int]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


@dataclass
class _Spool:
    path: Path
    fh: IO[bytes]  # open (for appending while live), under an exclusive advisory lock
    units: int = 0  # spans (and malformed parts) its requests hold; 0 when taken over


class OtlpReceiver:
    """Receives OTLP export requests into the telemetry tables under ``telemetry_root``
    (see the module's text). Use as a context manager, or ``start()`` and ``close()``;
    ``app()`` is its HTTP face. ``on_flush`` is called with each flush's report."""

    def __init__(self, telemetry_root: Path | str, *, limits: SpanLimits | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, flush_seconds: float = 5.0,
                 flush_spans: int = 10_000, flush_bytes: int = 64 << 20,
                 max_files_per_day: int = 32,
                 on_flush: Callable[[IngestReport], None] | None = None):
        if max_body_bytes < 1 or flush_spans < 1 or flush_bytes < 1 or flush_seconds <= 0:
            raise ValueError("max_body_bytes, flush_spans, flush_bytes and flush_seconds "
                             "must be positive")
        self.root = Path(telemetry_root)
        self.spool_dir = self.root / SPOOL_DIR
        self.limits = limits or SpanLimits()
        self.max_body_bytes = max_body_bytes
        self.flush_seconds = flush_seconds
        self.flush_spans = flush_spans
        self.flush_bytes = flush_bytes
        self.max_files_per_day = max_files_per_day
        self.on_flush = on_flush
        self._lock = threading.Lock()  # the live spool and the request counters
        self._flush_lock = threading.Lock()  # one flush at a time
        self._live: _Spool | None = None
        self._live_bytes = 0
        self._batches: list[_Spool] = []  # rotated out, waiting to be stored
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open = False
        self._requests: Counter[int] = Counter()
        self._received = 0
        self._rejected = 0
        self._flushes = 0
        self._totals: dict[str, Any] = {"spans_seen": 0, "stored": {}, "duplicates_skipped": {},
                                        "ignored": 0, "ignored_reasons": {}, "quarantined": {}}
        self._last_error: str | None = None

    # -- life ---------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        """Take over spool files a crashed receiver left, store them, and start the flusher."""
        if self._open:
            return self
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            spool = self._take_over(path)
            if spool is not None:
                self._batches.append(spool)
        self._open = True
        if self._batches:
            self.flush()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="otlp-flush", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop taking requests, stop the flusher and store what is waiting."""
        with self._lock:
            was_open, self._open = self._open, False
        if not was_open:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the flusher never dies; the next round retries
                _log.exception("OTLP receiver flush failed")

    # -- requests -----------------------------------------------------------------------
    def handle(self, body: bytes, content_type: str | None,
               content_encoding: str | None = None) -> Reply:
        """Answer one ``POST /v1/traces`` (called off the event loop)."""
        media = PROTOBUF
        try:
            media = _media_type(content_type)
            request, raw, media = decode_export_request(
                body, content_type, content_encoding, max_bytes=self.max_body_bytes)
            judged = self.accept(request, raw)
        except OtlpHttpError as exc:
            with self._lock:
                self._requests[exc.status] += 1
            return _failure(media, exc.status, exc.message)
        with self._lock:
            self._requests[200] += 1
        rejected = len(judged.quarantine)
        message = _rejection_message(judged.quarantine) if rejected else ""
        return _success(media, rejected, message)

    def accept(self, request: dict[str, Any], raw: bytes) -> Normalised:
        """Judge one decoded request (for the answer) and append it to the spool (for the
        flush, which stores it). Raises ``OtlpHttpError(503)`` when it cannot be written."""
        judged = Normalised(bounds=Bounds(self.limits, time.time_ns()))
        read_otlp_request(request, raw, "<otlp-http>", judged)
        line = raw + b"\n"
        with self._lock:
            if not self._open:
                raise OtlpHttpError(503, "the receiver is shutting down")
            try:
                if self._live is None:
                    self._live = self._new_spool()
                self._live.fh.write(line)
                self._live.fh.flush()
            except OSError as exc:
                _log.error("could not spool an OTLP request: %s", exc)
                raise OtlpHttpError(503, f"could not write the request down: {exc}") from exc
            self._live.units += judged.seen
            self._live_bytes += len(line)
            self._received += judged.seen
            self._rejected += len(judged.quarantine)
            full = self._live.units >= self.flush_spans or self._live_bytes >= self.flush_bytes
        if full:
            self._wake.set()
        return judged

    # -- spool --------------------------------------------------------------------------
    def _new_spool(self) -> _Spool:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.spool_dir / f"otlp-http-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        fh = path.open("ab")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        return _Spool(path, fh)

    @staticmethod
    def _take_over(path: Path) -> _Spool | None:
        """A spool file no live receiver holds, now held by this one (None if held)."""
        try:
            fh = path.open("rb")  # never creates: the owner may have just removed it
        except OSError:
            return None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return None
        if not path.exists():  # stored and removed by its owner just before the lock
            fh.close()
            return None
        return _Spool(path, fh)

    def _rotate(self) -> None:
        with self._lock:
            live, self._live = self._live, None
            self._live_bytes = 0
            if live is not None:
                self._batches.append(live)
        if live is not None:
            with contextlib.suppress(OSError):
                live.fh.flush()
                os.fsync(live.fh.fileno())

    # -- flush --------------------------------------------------------------------------
    def flush(self) -> IngestReport | None:
        """Store every spooled request through ``ingest_paths``; the report (None when
        nothing waited or the store failed: then the spool is kept for the next flush)."""
        with self._flush_lock:
            self._rotate()
            if not self._batches:
                return None
            batches = list(self._batches)
            try:
                report = ingest_paths([b.path for b in batches], self.root,
                                      max_files_per_day=self.max_files_per_day,
                                      limits=self.limits)
            except TransientError as exc:
                self._last_error = str(exc)
                _log.error("OTLP receiver could not store spans (kept for a retry): %s", exc)
                return None
            for failed, why in report.files_failed.items():
                # Spans read before the failure are stored; the file is kept for a person.
                self._last_error = f"{failed}: {why}"
                _log.error("OTLP receiver could not read its spool %s: %s", failed, why)
            for spool in batches:
                if str(spool.path) in report.files_failed:
                    with contextlib.suppress(OSError):
                        spool.path.rename(spool.path.with_suffix(".failed"))
                else:
                    spool.path.unlink(missing_ok=True)
                spool.fh.close()
            with self._lock:
                self._batches = [b for b in self._batches if b not in batches]
                self._add(report)
        if self.on_flush is not None:
            try:
                self.on_flush(report)
            except Exception:  # noqa: BLE001 - a caller's callback never loses a flush
                _log.exception("OTLP receiver on_flush callback failed")
        return report

    def _add(self, report: IngestReport) -> None:
        t = self._totals
        t["spans_seen"] += report.spans_seen
        t["ignored"] += report.ignored
        for key, part in (("stored", report.stored),
                          ("duplicates_skipped", report.duplicates_skipped),
                          ("ignored_reasons", report.ignored_reasons),
                          ("quarantined", report.quarantined)):
            _sum_into(t[key], part)
        self._flushes += 1

    # -- counts -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """What the receiver took and what became of it. ``spans_received`` counts what the
        requests held (spans, and malformed parts of a request); once flushed, each ended
        stored, a duplicate, ignored or quarantined: ``unaccounted`` is 0, and after
        ``close`` ``pending_spans`` is 0 (``spans_seen`` also counts spool files a crashed
        receiver left and this one stored)."""
        with self._lock:
            t = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._totals.items()}
            received, rejected = self._received, self._rejected
            requests = {str(k): v for k, v in sorted(self._requests.items())}
            pending = sum(b.units for b in self._batches) + (self._live.units if self._live
                                                             else 0)
            flushes = self._flushes
        accounted = (sum(t["stored"].values()) + sum(t["duplicates_skipped"].values())
                     + t["ignored"] + sum(t["quarantined"].values()))
        return {
            "requests": requests,
            "spans_received": received,
            "rejected_in_answers": rejected,
            "pending_spans": pending,
            "flushes": flushes,
            **t,
            "stored_total": sum(t["stored"].values()),
            "quarantined_total": sum(t["quarantined"].values()),
            "unaccounted": t["spans_seen"] - accounted,
            "last_error": self._last_error,
        }

    # -- HTTP ---------------------------------------------------------------------------
    def app(self) -> Any:
        """A Starlette application: ``POST /v1/traces`` and ``GET /status`` (the counts).
        Mount it in another ASGI app or run it with uvicorn (``ReceiverServer``)."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def traces(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            media = PROTOBUF
            try:
                media = _media_type(content_type)
                _check_encoding(request.headers.get("content-encoding"))
                declared = request.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
                    raise OtlpHttpError(413, f"body of {int(declared):,} bytes is larger than "
                                             f"max_body_bytes={self.max_body_bytes:,}")
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise OtlpHttpError(413, "body larger than "
                                                 f"max_body_bytes={self.max_body_bytes:,}")
            except OtlpHttpError as exc:
                with self._lock:
                    self._requests[exc.status] += 1
                reply = _failure(media, exc.status, exc.message)
            else:
                reply = await run_in_threadpool(self.handle, bytes(body), content_type,
                                                request.headers.get("content-encoding"))
            headers = ({"Retry-After": str(reply.retry_after_s)}
                       if reply.retry_after_s is not None else None)
            return Response(reply.body, status_code=reply.status, media_type=reply.media_type,
                            headers=headers)

        async def status(request: Request) -> Response:
            return JSONResponse(self.stats())

        return Starlette(routes=[Route(TRACES_PATH, traces, methods=["POST"]),
                                 Route("/status", status, methods=["GET"])])


class ReceiverServer:
    """An ASGI app served by uvicorn on a background thread (tests, embedding): ``start``
    returns once it listens; ``port`` 0 picks a free port (``self.port`` says which)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app, self.host, self.port = app, host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ReceiverServer:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="otlp-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TransientError(f"the OTLP receiver did not start on {self.host}:"
                                     f"{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
