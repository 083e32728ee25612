"""Tier deployments without an engine, for tests and benchmarks of the gateway itself.

A ``StubTier`` answers ``generate`` like ``serving.tiers.TierReplica`` (one token per prompt
character in, ``min(2, max_tokens)`` out, after ``delay_s``), so the real gateway, its
guardrails and its shared state run at full concurrency on a machine that could not start
one vLLM engine per tier in the time a test has. ``deploy_stub_tiers`` deploys them under
the names and owner marker the fleet uses, so ``serving.fleet.start_fleet`` finds them
running and starts no engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["StubTier", "deploy_stub_tiers"]


class StubTier:
    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def reconfigure(self, config: dict[str, Any]) -> None:
        """The owner marker (``serving.tiers.owner_config``): nothing to apply."""

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(self.delay_s)
        return {"text": "3", "input_tokens": len(request["prompt"]),
                "output_tokens": min(2, int(request.get("max_tokens", 2))),
                "cached_input_tokens": 0, "finish_reason": "stop"}


def deploy_stub_tiers(keys: Iterable[Any], *, owner: str, delay_s: float = 0.05) -> None:
    """Deploy a ``StubTier`` for each ``serving.tiers.DeploymentKey`` (Serve must run)."""
    from ray import serve

    from serving.tiers import owner_config

    for key in keys:
        deployment = serve.deployment(StubTier, name="TierReplica", num_replicas=1,
                                      ray_actor_options={"num_cpus": 0},
                                      max_ongoing_requests=1024,
                                      logging_config={"enable_access_log": False},
                                      user_config=owner_config(owner))
        serve.run(deployment.bind(delay_s), name=key.app_name, route_prefix=None)
