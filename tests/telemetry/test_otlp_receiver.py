"""The OTLP/HTTP receiver (``telemetry/receiver.py``) on a free loopback port, in-process:
the real OpenTelemetry SDK exporter (HTTP/protobuf) as the client, OTLP/JSON and gzip
bodies, refusals (400, 413, 415), partial success, duplicates, batching and recovery; every
span ends stored, a duplicate, ignored or quarantined, and the counts add up."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request

import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry_testkit import call_span, mutate, quarantined, to_otlp

from contracts.spans import SPAN_ATTEMPT, SPAN_CALL, SPAN_TASK, Attr, GenAI
from telemetry.receiver import SPOOL_DIR, OtlpReceiver, ReceiverServer
from telemetry.warehouse import read_table

PROTOBUF = "application/x-protobuf"


@pytest.fixture
def receiver(tmp_path):
    """A started receiver that flushes only when told (or on close), served on a free port."""
    rx = OtlpReceiver(tmp_path / "telemetry", flush_seconds=3600).start()
    server = ReceiverServer(rx.app()).start()
    yield rx, server
    server.stop()
    rx.close()


def post(url: str, body: bytes, content_type: str = PROTOBUF, **headers: str):
    request = urllib.request.Request(url + "/v1/traces", data=body, method="POST",
                                     headers={"Content-Type": content_type, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers.get("Content-Type"), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def balanced(stats: dict) -> None:
    assert stats["pending_spans"] == 0
    assert stats["unaccounted"] == 0
    assert stats["spans_seen"] == stats["spans_received"]
    assert stats["spans_seen"] == (stats["stored_total"]
                                   + sum(stats["duplicates_skipped"].values())
                                   + stats["ignored"] + stats["quarantined_total"])


def sdk_spans(emit) -> list:
    """Finished SDK spans, made by ``emit(tracer)``."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    emit(provider.get_tracer("test"))
    provider.shutdown()
    return list(memory.get_finished_spans())


CALL = {Attr.TASK_ID: "t-1", Attr.ATTEMPT: 1, Attr.TIER: "S", Attr.VARIANT: "bf16",
        Attr.CACHE: "miss", Attr.CACHED_INPUT_TOKENS: 0, Attr.REQUEST_MODEL: "auto",
        Attr.INPUT_TOKENS: 120, Attr.OUTPUT_TOKENS: 30}


def good_and_bad(tracer) -> None:
    with tracer.start_as_current_span(SPAN_CALL) as span:
        span.set_attributes(CALL)
    with tracer.start_as_current_span(SPAN_CALL) as span:
        span.set_attributes({**CALL, Attr.INPUT_TOKENS: -1})  # quarantined: negative_tokens
    with tracer.start_as_current_span(SPAN_CALL) as span:
        span.set_attributes({**CALL, Attr.INPUT_TOKENS: 7})


# ------------------------------------------------------------------ the SDK as the client
def test_the_sdk_exporter_delivers_product_and_genai_spans_into_the_warehouse(receiver):
    rx, server = receiver
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=server.url + "/v1/traces")))
    tracer = provider.get_tracer("harness")
    with tracer.start_as_current_span(SPAN_TASK) as task:
        task.set_attributes({Attr.TASK_ID: "t-1", Attr.FAMILY: "expr_eval", Attr.TEAM: "pay",
                             Attr.REPO: "api", Attr.AGENT: "sdk", Attr.OUTCOME: "green",
                             Attr.VERIFIER_PASSED: True})
        with tracer.start_as_current_span(SPAN_ATTEMPT) as attempt:
            attempt.set_attributes({Attr.TASK_ID: "t-1", Attr.ATTEMPT: 1, Attr.TIER: "S",
                                    Attr.VARIANT: "bf16", Attr.PASSED: False,
                                    Attr.PURPOSE: "serve", Attr.PROPENSITY: 1.0})
            with tracer.start_as_current_span(SPAN_CALL) as call:
                call.set_attributes(CALL)
        # An agent framework's spans, following the GenAI conventions only (plus the
        # product's attribution): an agent invocation read as the second attempt...
        with tracer.start_as_current_span("invoke_agent fixer") as agent:
            agent.set_attributes({GenAI.OPERATION_NAME: "invoke_agent",
                                  GenAI.AGENT_NAME: "fixer", GenAI.CONVERSATION_ID: "t-1",
                                  GenAI.PROVIDER_NAME: "fleet-autopilot",
                                  Attr.ATTEMPT: 2, Attr.TIER: "M", Attr.PURPOSE: "serve",
                                  Attr.PASSED: True})
            # ... a chat call under it, read as an llm.call ...
            with tracer.start_as_current_span("chat coder-medium") as chat:
                chat.set_attributes({GenAI.OPERATION_NAME: "chat",
                                     GenAI.PROVIDER_NAME: "fleet-autopilot",
                                     Attr.REQUEST_MODEL: "coder-medium",
                                     GenAI.RESPONSE_MODEL: "coder-medium-2026",
                                     GenAI.CONVERSATION_ID: "t-1",
                                     Attr.INPUT_TOKENS: 900, Attr.OUTPUT_TOKENS: 80,
                                     GenAI.CACHE_READ_INPUT_TOKENS: 512,
                                     Attr.TIER: "M", Attr.ATTEMPT: 2})
            # ... a tool call (a GenAI operation that is no model call) ...
            with tracer.start_as_current_span("execute_tool run_tests") as tool:
                tool.set_attribute(GenAI.OPERATION_NAME, "execute_tool")
        # ... and a span of neither kind.
        with tracer.start_as_current_span("GET /repo"):
            pass
    provider.shutdown()

    rx.close()
    stats = rx.stats()
    balanced(stats)
    assert stats["spans_received"] == 7 and stats["requests"] == {"200": 7}
    assert stats["stored"] == {"tasks": 1, "attempts": 2, "calls": 2}
    assert stats["ignored_reasons"] == {"genai_other_operation": 1, "other_span_name": 1}
    assert stats["quarantined_total"] == 0

    root = rx.root
    calls = read_table(root, "calls").set_index("tier")
    assert calls.loc["S", "input_tokens"] == 120 and calls.loc["S", "model"] == "auto"
    chat = calls.loc["M"]
    assert (chat["task_id"], chat["attempt"], chat["model"]) == ("t-1", 2, "coder-medium")
    assert (chat["input_tokens"], chat["output_tokens"]) == (900, 80)
    assert (chat["cached_input_tokens"], chat["cache"]) == (512, "prefix")
    attempts = read_table(root, "attempts").set_index("attempt")
    assert attempts.loc[2, "tier"] == "M" and attempts.loc[2, "task_id"] == "t-1"
    assert bool(attempts.loc[2, "passed"])
    assert read_table(root, "tasks")["task_id"].tolist() == ["t-1"]
    assert not list((root / SPOOL_DIR).glob("*.jsonl"))  # stored, so removed


def test_a_malformed_span_is_quarantined_beside_good_ones_and_reported(receiver):
    rx, server = receiver
    body = encode_spans(sdk_spans(good_and_bad)).SerializeToString()
    status, ctype, answer = post(server.url, body)
    assert status == 200 and ctype == PROTOBUF
    response = ExportTraceServiceResponse.FromString(answer)
    assert response.partial_success.rejected_spans == 1
    assert "negative_tokens" in response.partial_success.error_message
    rx.close()
    stats = rx.stats()
    balanced(stats)
    assert stats["stored"]["calls"] == 2 and stats["quarantined"] == {"negative_tokens": 1}
    [record] = quarantined(rx.root)
    assert record["reason"] == "negative_tokens"
    assert sorted(read_table(rx.root, "calls")["input_tokens"]) == [7, 120]


def test_a_clean_request_has_no_partial_success(receiver):
    _, server = receiver

    def one_good(tracer) -> None:
        with tracer.start_as_current_span(SPAN_CALL) as span:
            span.set_attributes(CALL)

    spans = sdk_spans(one_good)
    status, _, answer = post(server.url, encode_spans(spans).SerializeToString())
    assert status == 200
    assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")


def test_json_bodies_are_read_and_answered_in_json(receiver):
    rx, server = receiver
    good, bad = call_span(1), mutate(call_span(2), **{Attr.TIER: ""})
    request = to_otlp([good, bad])
    pretty = json.dumps(request, indent=2).encode()  # several lines: still one request
    status, ctype, answer = post(server.url, pretty, "application/json; charset=utf-8")
    assert status == 200 and ctype.startswith("application/json")
    partial = json.loads(answer)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1 and "missing_tier" in partial["errorMessage"]
    status, _, answer = post(server.url, b"{}", "application/json")  # an empty request
    assert status == 200 and json.loads(answer) == {}
    rx.close()
    stats = rx.stats()
    balanced(stats)
    assert stats["stored"]["calls"] == 1 and stats["quarantined"] == {"missing_tier": 1}
    assert stats["ignored_reasons"] == {"empty_otlp_request": 1}


def test_gzip_bodies_are_inflated(receiver):
    rx, server = receiver
    body = gzip.compress(encode_spans(sdk_spans(good_and_bad)).SerializeToString())
    status, _, _ = post(server.url, body, PROTOBUF, **{"Content-Encoding": "gzip"})
    assert status == 200
    json_body = gzip.compress(json.dumps(to_otlp([call_span(5)])).encode())
    status, _, _ = post(server.url, json_body, "application/json", **{"Content-Encoding": "gzip"})
    assert status == 200
    rx.close()
    stats = rx.stats()
    balanced(stats)
    assert stats["stored"]["calls"] == 3


def test_the_sdk_exporter_with_gzip_compression(receiver):
    from opentelemetry.exporter.otlp.proto.http import Compression

    rx, server = receiver
    exporter = OTLPSpanExporter(endpoint=server.url + "/v1/traces", compression=Compression.Gzip)
    assert exporter.export(sdk_spans(good_and_bad)) == SpanExportResult.SUCCESS
    rx.close()
    assert rx.stats()["stored"]["calls"] == 2


# ----------------------------------------------------------------------------- refusals
def test_undecodable_bodies_are_refused_with_400(receiver):
    rx, server = receiver
    status, ctype, answer = post(server.url, b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert status == 400 and ctype == PROTOBUF
    assert Status.FromString(answer).code == 3  # INVALID_ARGUMENT
    status, ctype, answer = post(server.url, b"{not json", "application/json")
    assert status == 400 and "JSON" in json.loads(answer)["message"]
    status, _, _ = post(server.url, b"[1, 2]", "application/json")
    assert status == 400
    status, _, _ = post(server.url, b"\x1f\x8b garbage", PROTOBUF, **{"Content-Encoding": "gzip"})
    assert status == 400
    rx.close()
    stats = rx.stats()
    assert stats["requests"] == {"400": 4} and stats["spans_received"] == 0
    balanced(stats)


def test_other_content_types_and_encodings_are_refused_with_415(receiver):
    rx, server = receiver
    body = encode_spans(sdk_spans(good_and_bad)).SerializeToString()
    assert post(server.url, body, "text/plain")[0] == 415
    assert post(server.url, body, PROTOBUF, **{"Content-Encoding": "br"})[0] == 415
    rx.close()
    assert rx.stats()["requests"] == {"415": 2} and rx.stats()["stored_total"] == 0


def test_oversize_bodies_are_refused_with_413_before_and_after_gzip(tmp_path):
    with OtlpReceiver(tmp_path, max_body_bytes=2_000, flush_seconds=3600) as rx, \
            ReceiverServer(rx.app()) as server:
        assert post(server.url, b"\x00" * 5_000)[0] == 413
        bomb = gzip.compress(json.dumps(to_otlp([call_span(n) for n in range(50)])).encode())
        assert len(bomb) < 2_000
        status, _, answer = post(server.url, bomb, "application/json",
                                 **{"Content-Encoding": "gzip"})
        assert status == 413 and "max_body_bytes" in json.loads(answer)["message"]
    assert rx.stats()["requests"] == {"413": 2} and rx.stats()["spans_received"] == 0


# ---------------------------------------------------------------- duplicates and batching
def test_an_export_sent_twice_is_counted_as_duplicates(receiver):
    rx, server = receiver
    body = encode_spans(sdk_spans(good_and_bad)).SerializeToString()
    assert post(server.url, body)[0] == 200
    rx.flush()  # the first copy stored ...
    assert post(server.url, body)[0] == 200
    assert post(server.url, body)[0] == 200  # ... and a copy within one flush
    rx.close()
    stats = rx.stats()
    balanced(stats)
    assert stats["stored"]["calls"] == 2
    assert stats["duplicates_skipped"]["calls"] == 4
    assert stats["quarantined"] == {"negative_tokens": 3}  # judged every time it came
    assert len(read_table(rx.root, "calls")) == 2


def test_many_small_requests_make_one_file_per_partition_per_flush(receiver):
    rx, server = receiver
    for n in range(40):
        assert post(server.url, json.dumps(to_otlp([call_span(n)])).encode(),
                    "application/json")[0] == 200
    assert rx.stats()["pending_spans"] == 40
    report = rx.flush()
    assert report.stored["calls"] == 40 and report.balanced
    [partition] = (rx.root / "calls").glob("day=*")
    assert len(list(partition.glob("part-*.parquet"))) == 1
    assert rx.flush() is None  # nothing waiting: no empty write


def test_a_full_spool_flushes_without_waiting_for_the_timer(tmp_path):
    with OtlpReceiver(tmp_path, flush_seconds=3600, flush_spans=3) as rx, \
            ReceiverServer(rx.app()) as server:
        post(server.url, json.dumps(to_otlp([call_span(n) for n in range(3)])).encode(),
             "application/json")
        deadline = time.monotonic() + 20
        while rx.stats()["flushes"] == 0:
            assert time.monotonic() < deadline, "no flush once flush_spans were waiting"
            time.sleep(0.05)
        assert rx.stats()["stored"]["calls"] == 3


def test_a_crashed_receivers_spool_is_stored_when_the_next_one_starts(tmp_path):
    spool = tmp_path / SPOOL_DIR
    spool.mkdir(parents=True)
    (spool / "otlp-http-crashed.jsonl").write_text(
        json.dumps(to_otlp([call_span(1), call_span(2)])) + "\n")
    flushed = []
    with OtlpReceiver(tmp_path, flush_seconds=3600, on_flush=flushed.append) as rx:
        assert rx.stats()["stored"]["calls"] == 2
    assert [r.stored["calls"] for r in flushed] == [2]
    assert not list(spool.glob("*.jsonl"))


def test_a_live_spool_is_never_taken_by_a_second_receiver(tmp_path):
    with OtlpReceiver(tmp_path, flush_seconds=3600) as first:
        first.accept(to_otlp([call_span(1)]), json.dumps(to_otlp([call_span(1)])).encode())
        with OtlpReceiver(tmp_path, flush_seconds=3600) as second:
            assert second.stats()["spans_seen"] == 0
        assert first.stats()["pending_spans"] == 1
    assert first.stats()["stored"]["calls"] == 1


def test_requests_after_close_are_refused_for_a_retry(tmp_path):
    rx = OtlpReceiver(tmp_path, flush_seconds=3600)
    app = rx.app()
    rx.start()
    rx.close()
    with ReceiverServer(app) as server:
        body = encode_spans(sdk_spans(good_and_bad)).SerializeToString()
        request = urllib.request.Request(server.url + "/v1/traces", data=body, method="POST",
                                         headers={"Content-Type": PROTOBUF})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 503 and err.value.headers["Retry-After"]


def test_the_app_mounts_inside_another_asgi_app(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    with OtlpReceiver(tmp_path, flush_seconds=3600) as rx:
        parent = Starlette(routes=[Mount("/otlp", app=rx.app())])
        with ReceiverServer(parent) as server:
            body = encode_spans(sdk_spans(good_and_bad)).SerializeToString()
            status, _, _ = post(server.url + "/otlp", body)
            assert status == 200
            with urllib.request.urlopen(server.url + "/otlp/status", timeout=30) as reply:
                assert json.loads(reply.read())["spans_received"] == 3
    assert rx.stats()["stored"]["calls"] == 2
