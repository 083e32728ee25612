"""The serving path the gates run through, as a Protocol, and its gateway adapter.

``ServingPath.complete`` runs one attempt of one suite case under a stored policy version
with deterministic decoding (temperature 0, the gateway's default), and returns what the
gateway measured. A guardrail refusal raises ``GuardrailRefusal(code, message)`` (the one
type of ``contracts.guardrails``, re-exported here); any other failure raises (the runner
records it as an ERROR for that case).

``GatewayServingPath`` adapts ``serving.client.GatewayClient`` (docs: the gateway contract).
It imports the client lazily, so ``import gates`` needs neither the client nor httpx.
Unit tests use ``gates.fakes.FakeServingPath``.

Time is bounded when the gateway cannot be reached: connecting gives up after
``connect_timeout_s``, a call's retries stop at ``retry_budget_s``, and once one call has
failed all its retries the path counts the gateway as down for ``down_for_s``: later calls
fail at once, naming the first failure, instead of each waiting out its own retries. One
failed case already makes the run partial (every gate that reads it is ERROR), so a gate
against a gateway that is not there ends ERROR in seconds, not minutes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from contracts.errors import TransientError
from contracts.guardrails import GuardrailRefusal
from gates.suite import SuiteCase

__all__ = [
    "GATE_REPO",
    "GATE_TEAM",
    "CaseOutput",
    "GatewayDown",
    "GatewayServingPath",
    "GuardrailRefusal",
    "ServingPath",
]

ResponseCache = Literal["use", "bypass"]
GATE_TEAM = "autopilot-gate"
GATE_REPO = "gate-suite"


@dataclass(frozen=True)
class CaseOutput:
    text: str
    tier: str
    variant: str | None
    adapter: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: float
    cache: str  # miss | prefix | response
    cost_usd: float = 0.0
    policy_version: int | None = None
    policy_hash: str | None = None


@runtime_checkable
class ServingPath(Protocol):
    def complete(self, case: SuiteCase, *, policy_version: int, attempt: int = 1,
                 response_cache: ResponseCache = "use", task_id: str | None = None
                 ) -> CaseOutput:
        """One attempt of ``case`` under stored policy ``policy_version``.

        ``task_id`` identifies the task the attempt belongs to (guardrails count per task;
        routing draws are seeded by it); None means one derived from the case id.
        """
        ...


class GatewayDown(TransientError):
    """The gateway failed a call's every retry a moment ago: this call was not attempted."""


class GatewayServingPath:
    """``ServingPath`` over HTTP: the real gateway (Ray Serve + vLLM tiers)."""

    def __init__(self, base_url: str, *, timeout_s: float = 120.0, team: str = GATE_TEAM,
                 repo: str = GATE_REPO, client: Any = None, retries: int = 3,
                 connect_timeout_s: float = 10.0, retry_budget_s: float = 20.0,
                 down_for_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if client is None:
            from serving.client import GatewayClient

            client = GatewayClient(base_url, timeout_s=timeout_s,
                                   connect_timeout_s=connect_timeout_s)
        self.client = client
        self.base_url = base_url
        self.team = team
        self.repo = repo
        self.retries = retries
        self.retry_budget_s = retry_budget_s
        self.down_for_s = down_for_s
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = float("-inf")
        self._down_reason = ""

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn`` with jittered exponential backoff on TransientError (connection failures,
        5xx) within ``retries`` tries and ``retry_budget_s``; a guardrail refusal or any
        other permanent error goes up as raised, untried again."""
        with self._lock:
            if self._clock() < self._down_until:
                raise GatewayDown(f"{self.base_url}: gateway unreachable, not retried "
                                  f"(first failure: {self._down_reason})")
        start = self._clock()
        for i in range(max(1, self.retries)):
            try:
                result = fn()
            except TransientError as exc:
                delay = min(5.0, 0.2 * 2**i) * (0.5 + random.random() / 2)
                if i >= self.retries - 1 or self._clock() - start + delay > self.retry_budget_s:
                    with self._lock:
                        if self._clock() >= self._down_until:
                            self._down_reason = str(exc)[:200]
                        self._down_until = self._clock() + self.down_for_s
                    raise
                self._sleep(delay)
            else:
                with self._lock:
                    self._down_until = float("-inf")
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def complete(self, case: SuiteCase, *, policy_version: int, attempt: int = 1,
                 response_cache: ResponseCache = "use", task_id: str | None = None
                 ) -> CaseOutput:
        from serving.client import TaskContext

        task = TaskContext(
            task_id=task_id or f"gate-{case.id}", attempt=attempt, family=case.family,
            team=self.team, repo=self.repo, features=dict(case.features), purpose="gate",
            policy_version=policy_version, response_cache=response_cache, traceparent=None,
        )
        # Only connection-level failures (TransientError) are retried; a guardrail refusal
        # (GuardrailRefusal, permanent) goes up as the client raised it.
        done = self._call(
            lambda: self.client.complete(case.prompt, task=task, max_tokens=case.max_tokens,
                                         stop=("\n",)))
        return CaseOutput(
            text=done.text, tier=done.tier, variant=done.variant, adapter=done.adapter,
            input_tokens=int(done.input_tokens), output_tokens=int(done.output_tokens),
            latency_ms=float(done.latency_ms), cache=str(done.cache),
            cost_usd=float(done.cost_usd or 0.0), policy_version=done.policy_version,
            policy_hash=done.policy_hash,
        )

    def active_policy(self) -> dict[str, Any]:
        """The gateway's ``GET /autopilot/policy``: ``{version, content_hash}``."""
        return self._call(self.client.policy)
