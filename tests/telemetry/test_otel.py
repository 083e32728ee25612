"""OpenTelemetry set-up: the JSON-lines exporter, endpoint selection, and a round trip of
spans emitted with the real SDK through the ingester."""

from __future__ import annotations

import json
import threading

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from contracts.errors import PermanentError
from contracts.spans import (
    FEATURE_PREFIX,
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_TASK,
    Attr,
    CacheStatus,
    Outcome,
    Purpose,
)
from telemetry import otel
from telemetry.ingest import ingest_paths
from telemetry.otel import (
    JsonLinesSpanExporter,
    configure_tracing,
    set_span_attributes,
    shutdown_tracing,
)
from telemetry.warehouse import read_table


@pytest.fixture(autouse=True)
def _no_collector(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield
    shutdown_tracing()


def emit_task(tracer, n: int) -> None:
    with tracer.start_as_current_span(SPAN_TASK) as task:
        for attempt in (1, 2):
            with tracer.start_as_current_span(SPAN_ATTEMPT) as span:
                set_span_attributes(span, {
                    Attr.TASK_ID: f"t{n}", Attr.ATTEMPT: attempt, Attr.TIER: "small",
                    Attr.VARIANT: "int8", Attr.ADAPTER: None, Attr.PASSED: attempt == 2,
                    Attr.PURPOSE: Purpose.SERVE, Attr.PROPENSITY: 0.9,
                    Attr.POLICY_VERSION: "4",
                })
                with tracer.start_as_current_span(SPAN_CALL) as call:
                    set_span_attributes(call, {
                        Attr.REQUEST_MODEL: "qwen", Attr.INPUT_TOKENS: 1200,
                        Attr.OUTPUT_TOKENS: 80, Attr.TIER: "small", Attr.VARIANT: "int8",
                        Attr.ADAPTER: None, Attr.CACHE: CacheStatus.MISS,
                        Attr.CACHED_INPUT_TOKENS: 0, Attr.TASK_ID: f"t{n}",
                        Attr.ATTEMPT: attempt, Attr.POLICY_VERSION: "4", Attr.COST_USD: None,
                    })
        set_span_attributes(task, {
            Attr.TASK_ID: f"t{n}", Attr.FAMILY: "list_ops", Attr.TEAM: "search",
            Attr.REPO: "web", Attr.AGENT: "driver", Attr.OUTCOME: Outcome.GREEN,
            Attr.VERIFIER_PASSED: True, Attr.REVIEW_ACCEPTED: None,
            Attr.POLICY_VERSION: "4", FEATURE_PREFIX + "size": n,
            FEATURE_PREFIX + "lang": "go",
        })


def test_spans_from_the_sdk_round_trip_through_the_ingester(tmp_path):
    spans_file = tmp_path / "spans" / "driver.jsonl"
    provider = configure_tracing(service_name="driver-test", jsonl_path=spans_file,
                                 set_global=False)
    tracer = provider.get_tracer("test")
    for n in range(5):
        emit_task(tracer, n)
    shutdown_tracing()

    lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert len(lines) == 5 * (1 + 2 + 2)
    first = lines[0]
    assert set(first) == {"name", "trace_id", "span_id", "parent_span_id",
                          "start_time_unix_nano", "end_time_unix_nano", "attributes"}
    assert len(first["trace_id"]) == 32 and len(first["span_id"]) == 16
    assert first["trace_id"] == first["trace_id"].lower()
    assert Attr.ADAPTER not in first["attributes"]  # None values are dropped

    root = tmp_path / "tel"
    report = ingest_paths([spans_file], root)
    assert report.quarantined == {} and report.stored == {"tasks": 5, "attempts": 10,
                                                          "calls": 10}
    tasks = read_table(root, "tasks")
    attempts = read_table(root, "attempts")
    calls = read_table(root, "calls")
    # parent links survive: call -> attempt -> task, all in the task's trace
    assert set(calls["parent_span_id"]) == set(attempts["span_id"])
    assert set(attempts["parent_span_id"]) == set(tasks["span_id"])
    assert sorted(tasks["outcome"]) == ["green"] * 5
    assert attempts["purpose"].unique().tolist() == ["serve"]
    assert calls["cache"].unique().tolist() == ["miss"]
    assert json.loads(tasks.set_index("task_id").loc["t3", "features"]) == {"lang": "go",
                                                                         "size": 3}
    assert tasks["review_accepted"].isna().all()


def test_exporter_is_safe_under_concurrent_exports(tmp_path):
    path = tmp_path / "spans.jsonl"
    exporter = JsonLinesSpanExporter(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # export on each span end
    tracer = provider.get_tracer("test")

    def work(k: int) -> None:
        for i in range(200):
            with tracer.start_as_current_span(SPAN_CALL) as span:
                span.set_attribute("i", i)
                span.set_attribute("k", k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    provider.shutdown()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1600
    assert len({r["span_id"] for r in records}) == 1600


def test_exporter_appends_and_refuses_after_shutdown(tmp_path):
    path = tmp_path / "spans.jsonl"
    path.write_text('{"existing": true}\n')
    provider = configure_tracing(jsonl_path=path, set_global=False)
    with provider.get_tracer("t").start_as_current_span(SPAN_TASK):
        pass
    shutdown_tracing()
    assert path.read_text().splitlines()[0] == '{"existing": true}'
    assert len(path.read_text().splitlines()) == 2
    exporter = JsonLinesSpanExporter(path)
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert exporter.export([]).name == "FAILURE"


def test_an_endpoint_selects_otlp_http_with_the_traces_path(tmp_path):
    exporter = otel._exporter("http://collector:4318", tmp_path / "ignored.jsonl")
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://collector:4318/v1/traces"
    same = otel._exporter("http://collector:4318/v1/traces/", None)
    assert same._endpoint == "http://collector:4318/v1/traces"


def test_the_standard_environment_variable_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel.example:4318")
    exporter = otel._exporter(None, tmp_path / "spans.jsonl")
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://otel.example:4318/v1/traces"
    assert not (tmp_path / "spans.jsonl").exists()


def test_no_destination_is_a_permanent_error():
    with pytest.raises(PermanentError):
        configure_tracing(set_global=False)


def test_set_span_attributes_drops_none_and_writes_enum_values():
    provider = TracerProvider()
    with provider.get_tracer("t").start_as_current_span(SPAN_TASK) as span:
        set_span_attributes(span, {Attr.OUTCOME: Outcome.FAILED, Attr.REVIEW_ACCEPTED: None,
                                   Attr.ATTEMPT: 2})
        assert dict(span.attributes) == {Attr.OUTCOME: "failed", Attr.ATTEMPT: 2}
