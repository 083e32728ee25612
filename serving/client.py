"""A small client for the gateway (standard library HTTP; no extra dependency).

``GatewayClient(url).complete(prompt, task=TaskContext(...))`` returns a ``Completion``;
guardrail refusals raise ``contracts.guardrails.GuardrailRefusal`` (permanent), refused
requests raise ``GatewayRequestError`` (permanent), and connection failures or 5xx answers raise
``GatewayUnavailable`` (transient: retry with ``contracts.errors.retry_transient``).
An API key (``api_key``, else ``$AUTOPILOT_API_KEY``) is sent as ``Authorization: Bearer``;
a gateway that requires keys refuses calls without one (HTTP 401, ``GatewayRequestError``).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts.errors import PermanentError, TransientError
from contracts.guardrails import GuardrailRefusal

__all__ = [
    "Completion",
    "GatewayClient",
    "GatewayRequestError",
    "GatewayUnavailable",
    "TaskContext",
]


# A guardrail refusal (HTTP 403, or 429 from a gateway before issue 15; error type
# "guardrail") raises the contracts' one refusal type (``code``: one of
# contracts.guardrails.CAPS); the old name stays importable.


class GatewayRequestError(PermanentError):
    """The gateway refused the request (HTTP 4xx other than a guardrail)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


class GatewayUnavailable(TransientError):
    """The gateway could not be reached or answered 5xx."""


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    attempt: int = 1
    family: str | None = None
    team: str | None = None
    repo: str | None = None
    features: Mapping[str, Any] = field(default_factory=dict)
    purpose: Literal["serve", "shadow", "gate"] = "serve"
    policy_version: int | None = None
    response_cache: Literal["use", "bypass"] = "use"
    traceparent: str | None = None
    shadow_traceparent: str | None = None  # extension: parent of the shadow call's span
    clock_offset_ns: int = 0  # extension: shifts the gateway's span clock (simulated days)

    def as_body(self) -> dict[str, Any]:
        body = {"task_id": self.task_id, "attempt": self.attempt, "family": self.family,
                "team": self.team, "repo": self.repo, "features": dict(self.features),
                "purpose": self.purpose, "policy_version": self.policy_version,
                "response_cache": self.response_cache, "traceparent": self.traceparent,
                "shadow_traceparent": self.shadow_traceparent,
                "clock_offset_ns": self.clock_offset_ns or None}
        return {k: v for k, v in body.items() if v is not None}


@dataclass(frozen=True)
class Completion:
    text: str
    tier: str
    variant: str
    adapter: str | None
    cache: str
    policy_version: int
    policy_hash: str
    propensity: float | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    latency_ms: float
    cost_usd: float
    shadow: Completion | None = None
    finish_reason: str | None = None

    @classmethod
    def from_fields(cls, text: str, fields: Mapping[str, Any],
                    finish_reason: str | None = None) -> Completion:
        shadow = fields.get("shadow")
        return cls(
            text=text, tier=fields["tier"], variant=fields["variant"],
            adapter=fields.get("adapter"), cache=fields["cache"],
            policy_version=int(fields["policy_version"]), policy_hash=fields["policy_hash"],
            propensity=fields.get("propensity"), input_tokens=int(fields["input_tokens"]),
            output_tokens=int(fields["output_tokens"]),
            cached_input_tokens=int(fields["cached_input_tokens"]),
            latency_ms=float(fields["latency_ms"]), cost_usd=float(fields["cost_usd"]),
            shadow=cls.from_fields(shadow["text"], shadow) if shadow else None,
            finish_reason=finish_reason,
        )


class _ReadTimeoutAfterConnect:
    """Connect (and the TLS handshake) under ``timeout``, then wait for answers up to
    ``read_timeout``: an address that never answers costs seconds, not the generation
    timeout. Reconnects of a kept-alive connection get the same two timeouts."""

    read_timeout: float | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class _HTTPConnection(_ReadTimeoutAfterConnect, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeoutAfterConnect, http.client.HTTPSConnection):
    pass


class GatewayClient:
    """Thread-safe: each thread keeps its own keep-alive connection to the gateway.

    ``timeout_s`` bounds the wait for an answer (a generation); ``connect_timeout_s`` bounds
    reaching the gateway at all (TCP connect and TLS handshake). ``api_key``: the gateway
    API key to send (default ``$AUTOPILOT_API_KEY``; none: no Authorization header)."""

    def __init__(self, base_url: str, timeout_s: float = 120.0, *,
                 connect_timeout_s: float = 10.0, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or os.environ.get("AUTOPILOT_API_KEY") or None
        self.timeout_s = timeout_s
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port] (got {base_url!r})")
        self._scheme, self._host = parsed.scheme, parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            cls = _HTTPSConnection if self._scheme == "https" else _HTTPConnection
            conn = cls(self._host, self._port, timeout=self.connect_timeout_s)
            conn.read_timeout = self.timeout_s
            self._local.conn = conn
        return conn

    def _send(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as err:
                # A kept-alive connection the server closed: retry once on a new one.
                if attempt == 1:
                    raise GatewayUnavailable(f"{self.base_url}{path}: {err}") from None
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                self._local.conn = None
                raise GatewayUnavailable(f"{self.base_url}{path}: {err}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        status, raw = self._send(method, path, data)
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            payload = {"error": {"message": raw[:500].decode(errors="replace")}}
        if status < 400:
            return payload
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        error = error if isinstance(error, dict) else {"message": str(error)}
        message = error.get("message") or str(payload)[:500]
        if status in (403, 429) and error.get("type") == "guardrail":
            raise GuardrailRefusal(error.get("code", "unknown"), message)
        if status >= 500:
            raise GatewayUnavailable(f"HTTP {status} from {path}: {message}")
        raise GatewayRequestError(status, message)

    def complete(self, prompt: str, *, task: TaskContext, max_tokens: int = 32,
                 stop: Sequence[str] = ("\n",), model: str = "auto") -> Completion:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0, "stop": list(stop), "autopilot": task.as_body()}
        data = self._request("POST", "/v1/completions", body)
        choice = data["choices"][0]
        return Completion.from_fields(choice["text"], data["autopilot"],
                                      choice.get("finish_reason"))

    def chat(self, messages: Sequence[Mapping[str, str]], *, task: TaskContext,
             max_tokens: int = 32, stop: Sequence[str] = ("\n",),
             model: str = "auto") -> Completion:
        body = {"model": model, "messages": [dict(m) for m in messages],
                "max_tokens": max_tokens, "temperature": 0, "stop": list(stop),
                "autopilot": task.as_body()}
        data = self._request("POST", "/v1/chat/completions", body)
        choice = data["choices"][0]
        return Completion.from_fields(choice["message"]["content"], data["autopilot"],
                                      choice.get("finish_reason"))

    def report_verified(self, task_id: str, attempt: int, passed: bool) -> dict[str, Any]:
        """Tell the gateway the verifier's verdict on one attempt (distillation collection;
        the gateway ignores it unless collection is on for the family)."""
        return self._request("POST", "/autopilot/verified",
                             {"task_id": task_id, "attempt": attempt, "passed": passed})

    def policy(self) -> dict[str, Any]:
        return self._request("GET", "/autopilot/policy")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def flush_spans(self) -> bool:
        return bool(self._request("POST", "/autopilot/flush", {}).get("flushed"))

    def stats(self) -> dict[str, Any]:
        return self._request("GET", "/autopilot/stats")
