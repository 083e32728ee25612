"""The gateway's OpenAI surface as an OpenAI client sees it (issue 15, defect 3): the
gateway's own request handler and error handlers (``serving.openai_http``) on a plain
FastAPI app over a ``GatewayCore`` with fake tiers (no Ray, no vLLM), called through
Starlette's test client and through the official ``openai`` SDK when it is installed.
Streaming yields chunks, content parts are served, unsupported parameters are refused
naming them, every error is OpenAI's shape, and a guardrail refusal is a status the SDK
does not retry."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from contracts.manifest import load_fleet
from policies.policy import Policy
from serving.gateway_core import GatewayCore, PolicyBook
from serving.openai_http import complete_response, install_error_handlers

FLEET = load_fleet("controlplane/starter/fleet.yaml")
TASK = {"task_id": "t1", "family": "expr_eval", "team": "payments"}


def _policy():
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M"], "max_attempts": 3},
                 "guardrails": {"max_attempts_per_task": 2}}})


class FakeTiers:
    async def __call__(self, key, request):
        return {"text": f"{key.tier}:{request['prompt'][-3:]}",
                "input_tokens": len(request["prompt"]), "output_tokens": 2,
                "cached_input_tokens": 0, "finish_reason": "stop"}


def make_app():
    """The ingress's routes, minus Ray Serve: the same handler and error handlers."""
    p = _policy()
    core = GatewayCore(FLEET, PolicyBook(p, {1: p}.__getitem__), FakeTiers())
    app = install_error_handlers(FastAPI())
    app.state.requests = 0

    @app.middleware("http")
    async def count(request: Request, call_next):
        app.state.requests += 1
        return await call_next(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete_response(request, "completion", core.complete)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete_response(request, "chat", core.complete)

    @app.get("/typed")  # only to show a FastAPI validation error in OpenAI's shape
    async def typed(x: int):
        return {"x": x}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a tier replica died")

    return app


@pytest.fixture()
def app():
    return make_app()


@pytest.fixture()
def http(app):
    return TestClient(app, raise_server_exceptions=False)


def _events(response) -> list:
    """The SSE ``data:`` payloads, in order; ``[DONE]`` kept as the string."""
    assert response.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _is_openai_error(body, *, code=None, param=None):
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, body
    if param is not None:
        assert error["param"] == param, body
    return error


# ------------------------------------------------------------------ streaming (SSE)
def test_a_streamed_chat_is_server_sent_events_in_openai_chunk_shape(http):
    plain = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "eval: 1+2"}], "autopilot": TASK}).json()
    events = _events(http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "eval: 1+2"}], "stream": True,
        "autopilot": {**TASK, "task_id": "t2"}}))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"] == "S:1+2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["autopilot"]["tier"] == "S"


def test_a_streamed_completion_can_end_with_usage(http):
    events = _events(http.post("/v1/completions", json={
        "prompt": "eval: 1+2", "stream": True, "stream_options": {"include_usage": True},
        "autopilot": TASK}))
    assert events[-1] == "[DONE]"
    *text_chunks, usage_chunk = events[:-1]
    assert {c["object"] for c in events[:-1]} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == "S:1+2"
    assert all(c["usage"] is None for c in text_chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == len("eval: 1+2")
    assert usage_chunk["usage"]["completion_tokens"] == 2


def test_a_refused_stream_is_a_plain_error_status(http):
    r = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "stream": True, "n": 3})
    assert r.status_code == 400
    _is_openai_error(r.json(), code="unsupported_value", param="n")


# -------------------------------------------------------------- content and params
def test_content_parts_are_joined(http):
    r = http.post("/v1/chat/completions", json={"messages": [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "eval:"},
                                     {"type": "text", "text": "1+2"}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "S:1+2"  # "...eval:\n1+2"
    assert r.json()["usage"]["prompt_tokens"] == len("be brief\neval:\n1+2")


@pytest.mark.parametrize("content, param", [
    ([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}], "messages.0.content.0.type"),
    ([{"type": "text"}], "messages.0.content.0.text"),
    (None, "messages.0.content"),
])
def test_content_that_is_not_text_is_refused_naming_the_part(http, content, param):
    r = http.post("/v1/chat/completions",
                  json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400
    _is_openai_error(r.json(), param=param)


@pytest.mark.parametrize("extra, param, code", [
    ({"n": 2}, "n", "unsupported_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tools", "unsupported_parameter"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value"),
    ({"temperature": 0.7}, "temperature", "unsupported_value"),
])
def test_unsupported_chat_parameters_are_refused_naming_them(http, extra, param, code):
    r = http.post("/v1/chat/completions",
                  json={"messages": [{"role": "user", "content": "x"}], **extra})
    assert r.status_code == 400
    error = _is_openai_error(r.json(), code=code, param=param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": 0}, "logprobs"), ({"echo": True}, "echo"), ({"best_of": 2}, "best_of"),
    ({"suffix": "}"}, "suffix"), ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2]}, "prompt"),
])
def test_unsupported_completion_parameters_are_refused_naming_them(http, extra, param):
    r = http.post("/v1/completions", json={"prompt": "x", **extra})
    assert r.status_code == 400
    _is_openai_error(r.json(), param=param)


def test_neutral_values_of_unsupported_parameters_are_served(http):
    """What SDKs and frameworks send by default must not be refused."""
    r = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "n": 1, "tools": [],
        "tool_choice": "none", "logprobs": False, "presence_penalty": 0,
        "frequency_penalty": 0.0, "response_format": {"type": "text"}, "top_p": 1,
        "seed": 7, "user": "u", "max_completion_tokens": 5, "stream": False})
    assert r.status_code == 200, r.text
    c = http.post("/v1/completions", json={"prompt": ["eval: 1+2"], "echo": False})
    assert c.status_code == 200 and c.json()["choices"][0]["text"] == "S:1+2"


# --------------------------------------------------------------------- error shapes
def test_every_error_has_openai_shape(http):
    missing = http.post("/v1/nope", json={})
    assert missing.status_code == 404
    _is_openai_error(missing.json(), code="unknown_url")
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    _is_openai_error(wrong_method.json(), code="method_not_allowed")
    invalid = http.get("/typed", params={"x": "not a number"})
    assert invalid.status_code == 422
    _is_openai_error(invalid.json(), param="query.x")
    crashed = http.get("/boom")
    assert crashed.status_code == 500
    assert _is_openai_error(crashed.json(), code="internal_error")["type"] == "server_error"
    not_json = http.post("/v1/completions", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    _is_openai_error(not_json.json(), code="invalid_json")
    unknown_model = http.post("/v1/completions", json={"prompt": "x", "model": "XXL"})
    assert unknown_model.status_code == 404
    _is_openai_error(unknown_model.json(), code="model_not_found", param="model")
    bad_field = http.post("/v1/completions", json={"prompt": "x", "autopilot": {
        "task_id": "t", "attempt": 0}})
    assert bad_field.status_code == 400
    _is_openai_error(bad_field.json(), code="invalid_value", param="autopilot.attempt")


def test_a_guardrail_refusal_is_403_with_the_cap_as_code(http):
    for attempt in (1, 2):
        assert http.post("/v1/completions", json={
            "prompt": "x", "autopilot": {**TASK, "attempt": attempt}}).status_code == 200
    r = http.post("/v1/completions", json={"prompt": "x", "autopilot": {**TASK, "attempt": 3}})
    assert r.status_code == 403
    error = _is_openai_error(r.json(), code="max_attempts_per_task")
    assert error["type"] == "guardrail" and "attempt 3" in error["message"]


# ------------------------------------------------------------------ the openai SDK
@pytest.fixture()
def sdk(app):
    openai = pytest.importorskip("openai")
    return openai, openai.OpenAI(base_url="http://testserver/v1", api_key="unused",
                                 http_client=TestClient(app), max_retries=2)


def test_the_sdk_streams_chunks(sdk):
    _, client = sdk
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "eval: 1+2"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"autopilot": TASK})
    chunks = list(stream)
    assert len(chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "S:1+2"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    completion = list(client.completions.create(model="auto", prompt="eval: 4+4",
                                                stream=True, max_tokens=4))
    assert "".join(c.choices[0].text for c in completion) == "S:4+4"


def test_the_sdk_reads_errors_and_does_not_retry_a_refusal(sdk, app):
    openai, client = sdk
    for attempt in (1, 2):
        client.completions.create(model="auto", prompt="x",
                                  extra_body={"autopilot": {**TASK, "attempt": attempt}})
    before = app.state.requests
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.completions.create(model="auto", prompt="x",
                                  extra_body={"autopilot": {**TASK, "attempt": 3}})
    assert app.state.requests == before + 1  # not retried
    assert refused.value.code == "max_attempts_per_task"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="auto", n=2,
                                       messages=[{"role": "user", "content": "x"}])
    assert (bad.value.code, bad.value.param) == ("unsupported_value", "n")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="XXL", prompt="x")
