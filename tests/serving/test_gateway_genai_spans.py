"""The gateway's ``llm.call`` spans carry the OpenTelemetry GenAI attributes beside the
product's own: the model asked for and the one that served, the operation, the provider,
input/output/cache-read tokens; and the ingester stores them as it reads them."""

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.manifest import load_fleet
from contracts.spans import GENAI_PROVIDER, SPAN_CALL, Attr, GenAI
from policies.policy import Policy
from serving.gateway_core import GatewayCore, PolicyBook
from serving.protocol import parse_request
from telemetry.otel import span_to_flat
from telemetry.parsing import check_span

FLEET = load_fleet("controlplane/starter/fleet.yaml")
POLICY = Policy.model_validate({
    "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
    "spec": {"routing": {"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3},
             "cache": {"prefix": {"S": True, "M": True, "L": True}}}})


async def _tiers(key, request):
    cached = 8 if len(request["prompt"]) > 8 else 0
    return {"text": "ok", "input_tokens": len(request["prompt"]), "output_tokens": 2,
            "cached_input_tokens": cached, "finish_reason": "stop"}


def _spans(*bodies):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    core = GatewayCore(FLEET, PolicyBook(POLICY, {1: POLICY}.__getitem__), _tiers,
                       tracer=provider.get_tracer("t"), clock=lambda: 1_800_000_000.0)
    for kind, body in bodies:
        asyncio.run(core.complete(parse_request(body, kind)))
    return [s for s in exporter.get_finished_spans() if s.name == SPAN_CALL]


def _body(model="auto", attempt=1, **extra):
    return {"model": model, "max_tokens": 4, **extra,
            "autopilot": {"task_id": "g-1", "attempt": attempt, "family": "expr_eval",
                          "team": "payments"}}


def test_a_routed_completion_names_the_model_asked_for_and_the_one_that_served():
    [span] = _spans(("completion", _body(prompt="eval: 1+2\n=")))
    a = span.attributes
    served = f"{a[Attr.TIER]}/{a[Attr.VARIANT]}"
    assert a[Attr.REQUEST_MODEL] == "auto" and a[GenAI.RESPONSE_MODEL] == served
    assert a[GenAI.OPERATION_NAME] == "text_completion"
    assert a[GenAI.PROVIDER_NAME] == GENAI_PROVIDER
    assert a[Attr.INPUT_TOKENS] == len("eval: 1+2\n=") and a[Attr.OUTPUT_TOKENS] == 2
    assert a[GenAI.CACHE_READ_INPUT_TOKENS] == a[Attr.CACHED_INPUT_TOKENS] == 8


def test_a_chat_call_to_a_named_tier_is_a_chat_operation():
    [span] = _spans(("chat", _body(model="M", messages=[{"role": "user", "content": "hi"}])))
    a = span.attributes
    assert a[GenAI.OPERATION_NAME] == "chat"
    assert a[Attr.REQUEST_MODEL] == "M" and a[GenAI.RESPONSE_MODEL].startswith("M/")


def test_the_gateways_spans_pass_the_ingesters_rules():
    for span in _spans(("completion", _body(prompt="eval: 1+2\n=")),
                       ("chat", _body(attempt=2, messages=[{"role": "user", "content": "x"}]))):
        flat = span_to_flat(span)
        assert check_span(flat, now_ns=flat["start_time_unix_nano"]) is None
