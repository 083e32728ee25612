"""The gateway's request path in one process: ``GatewayCore`` over ``TierEngine``s.

The same routing, guardrails, caches, pricing and vLLM engines (pinned weights and
adapters checked at start) as the deployed fleet, without Ray Serve or HTTP. Gates can run
through it (``InProcessServingPath`` is a ``gates.port.ServingPath``), which is how the
distillation integration test gates a fresh adapter on two shared cores.

Engines start in the calling thread; every request runs on one event loop in a background
thread (vLLM's ``AsyncLLM`` stays bound to the loop that first used it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["InProcessGateway", "InProcessServingPath"]


class InProcessGateway:
    """Engines for the given (tier, variant) pairs and a ``GatewayCore`` over them."""

    def __init__(self, manifest_path: str | Path, policies: Mapping[int, Any],
                 active_version: int, variants: Iterable[tuple[str, str]], *,
                 engine_options: Any = None):
        from contracts.manifest import load_fleet
        from serving.engine import EngineOptions, TierEngine
        from serving.gateway_core import GatewayCore, PolicyBook

        self.manifest_path = Path(manifest_path)
        self.fleet = load_fleet(self.manifest_path)
        self.policies = dict(policies)
        options = engine_options or EngineOptions()
        self.engines: dict[tuple[str, str], Any] = {}
        try:
            for tier, variant in variants:
                self.engines[(tier, variant)] = TierEngine.start(
                    self.manifest_path, tier, variant, options=options, manifest=self.fleet)
        except BaseException:
            self.shutdown()
            raise
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inprocess-gateway",
                                        daemon=True)
        self._thread.start()
        book = PolicyBook(self.policies[active_version], self.policies.__getitem__)
        self.core = GatewayCore(self.fleet, book, self._call_tier)

    async def _call_tier(self, key: Any, request: dict[str, Any]) -> dict[str, Any]:
        engine = self.engines.get((key.tier, key.variant))
        if engine is None:
            from contracts.errors import PermanentError

            raise PermanentError(f"no engine started for {key.tier}/{key.variant}")
        g = await engine.generate(request["prompt"], max_tokens=request["max_tokens"],
                                  stop=tuple(request["stop"]), adapter=request.get("adapter"))
        return {"text": g.text, "input_tokens": g.input_tokens,
                "output_tokens": g.output_tokens, "cached_input_tokens": g.cached_input_tokens,
                "finish_reason": g.finish_reason}

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        from serving.protocol import parse_request

        parsed = parse_request(body, "completion")
        return asyncio.run_coroutine_threadsafe(self.core.complete(parsed), self.loop).result()

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.shutdown()
        self.engines = {}
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


class InProcessServingPath:
    """``gates.port.ServingPath`` over an ``InProcessGateway``."""

    def __init__(self, gateway: InProcessGateway, *, team: str = "autopilot-gate",
                 repo: str = "gate-suite"):
        self.gateway, self.team, self.repo = gateway, team, repo

    def complete(self, case: Any, *, policy_version: int, attempt: int = 1,
                 response_cache: str = "use", task_id: str | None = None) -> Any:
        from gates.port import CaseOutput

        body = {"prompt": case.prompt, "max_tokens": case.max_tokens, "stop": ["\n"],
                "autopilot": {"task_id": task_id or f"gate-{case.id}", "attempt": attempt,
                              "family": case.family, "team": self.team, "repo": self.repo,
                              "features": dict(case.features), "purpose": "gate",
                              "policy_version": policy_version,
                              "response_cache": response_cache}}
        # A guardrail refusal (contracts.guardrails.GuardrailRefusal) goes up as the gateway
        # raised it: the gates catch the same type.
        out = self.gateway.complete(body)
        ap = out["autopilot"]
        return CaseOutput(text=out["choices"][0]["text"], tier=ap["tier"],
                          variant=ap["variant"], adapter=ap["adapter"],
                          input_tokens=int(ap["input_tokens"]),
                          output_tokens=int(ap["output_tokens"]),
                          latency_ms=float(ap["latency_ms"]), cache=str(ap["cache"]),
                          cost_usd=float(ap["cost_usd"] or 0.0),
                          policy_version=ap["policy_version"], policy_hash=ap["policy_hash"])
