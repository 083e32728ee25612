"""GatewayClient against a small stand-in HTTP server: bodies, error mapping, keep-alive."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from contracts.errors import PermanentError, TransientError
from contracts.guardrails import GuardrailRefusal
from serving.client import (
    GatewayClient,
    GatewayRequestError,
    GatewayUnavailable,
    TaskContext,
)
from serving.fleet import free_port

FIELDS = {"tier": "S", "variant": "bf16", "adapter": None, "cache": "miss",
          "policy_version": 3, "policy_hash": "h", "propensity": 0.9, "input_tokens": 5,
          "output_tokens": 2, "cached_input_tokens": 0, "latency_ms": 1.5, "cost_usd": 1e-6}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(200, {"version": 3, "content_hash": "h"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append((body, self.client_address[1]))
        prompt = body.get("prompt", "")
        if prompt in ("refuse", "refuse-429"):  # 429: a gateway from before issue 15
            return self._reply(403 if prompt == "refuse" else 429,
                               {"error": {"type": "guardrail", "code": "max_usd_per_task",
                                          "message": "spent $1 of $0.5", "param": None}})
        if prompt == "bad":
            return self._reply(400, {"error": {"type": "invalid_request",
                                               "message": "autopilot.attempt: >= 1"}})
        if prompt == "boom":
            return self._reply(503, {"error": {"type": "tier_unavailable", "message": "down"}})
        shadow = {**FIELDS, "tier": "M", "propensity": None, "text": "s"}
        self._reply(200, {"choices": [{"text": "ok", "finish_reason": "stop"}],
                          "autopilot": {**FIELDS, "shadow": shadow}})


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_complete_sends_the_task_context_and_parses_the_completion(server):
    client = GatewayClient(server)
    task = TaskContext(task_id="t1", attempt=2, family="expr_eval", features={"d": 1},
                       clock_offset_ns=5)
    c = client.complete("p", task=task, max_tokens=8)
    body, port = Handler.seen[-1]
    assert body["autopilot"] == {"task_id": "t1", "attempt": 2, "family": "expr_eval",
                                 "features": {"d": 1}, "purpose": "serve",
                                 "response_cache": "use", "clock_offset_ns": 5}
    assert body["max_tokens"] == 8 and body["stop"] == ["\n"] and body["temperature"] == 0
    assert (c.text, c.tier, c.policy_version, c.shadow.tier, c.shadow.text) == (
        "ok", "S", 3, "M", "s")
    client.complete("p", task=task)
    assert Handler.seen[-1][1] == port  # the same kept-alive connection
    assert client.policy() == {"version": 3, "content_hash": "h"}


def test_errors_map_to_the_two_error_kinds(server):
    client = GatewayClient(server)
    task = TaskContext(task_id="t")
    with pytest.raises(GuardrailRefusal) as err:
        client.complete("refuse", task=task)
    assert err.value.code == "max_usd_per_task" and isinstance(err.value, PermanentError)
    with pytest.raises(GuardrailRefusal):
        client.complete("refuse-429", task=task)
    with pytest.raises(GatewayRequestError) as err:
        client.complete("bad", task=task)
    assert err.value.status == 400 and "autopilot.attempt" in str(err.value)
    with pytest.raises(GatewayUnavailable):
        client.complete("boom", task=task)
    with pytest.raises(TransientError):
        GatewayClient(f"http://127.0.0.1:{free_port()}", timeout_s=2).policy()
    with pytest.raises(ValueError, match="base_url"):
        GatewayClient("localhost:80")
