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

__all__ = ["StubTier", "deploy_stub_tiers", "stub_tier_application"]


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


def stub_tier_application(*, owner: str, delay_s: float = 0.05):
    """A ``StubTier`` application (bound, not yet running), marked as ``owner``'s."""
    from ray import serve

    from serving.tiers import owner_config

    deployment = serve.deployment(StubTier, name="TierReplica", num_replicas=1,
                                  ray_actor_options={"num_cpus": 0},
                                  max_ongoing_requests=1024,
                                  logging_config={"enable_access_log": False},
                                  user_config=owner_config(owner))
    return deployment.bind(delay_s)


def deploy_stub_tiers(keys: Iterable[Any], *, owner: str, delay_s: float = 0.05) -> None:
    """Deploy a ``StubTier`` for each ``serving.tiers.DeploymentKey`` (Serve must run)."""
    from ray import serve

    for key in keys:
        serve.run(stub_tier_application(owner=owner, delay_s=delay_s), name=key.app_name,
                  route_prefix=None)


def main(argv: list[str] | None = None) -> None:
    """``python -m serving.stub_tiers --ray-address A --port P --manifest F --store-url U``:
    start Serve's proxy on a running cluster (port P) and deploy a stub for every tier the
    store's active policy needs, as that store's fleet, so ``autopilot serve --ray-address``
    then starts no engine (``scripts/cluster_up.sh`` with ``AUTOPILOT_CLUSTER_STUB_TIERS=1``)."""
    import argparse

    import ray
    from ray import serve

    from contracts.manifest import load_fleet
    from serving.tiers import fleet_owner, required_deployments
    from store import Store

    parser = argparse.ArgumentParser(prog="python -m serving.stub_tiers")
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--store-url", required=True)
    args = parser.parse_args(argv)
    with Store.open(args.store_url) as store:
        record = store.active_policy()
    if record is None:
        raise SystemExit("the store has no active policy: run `autopilot init` first")
    keys = required_deployments(record.policy, load_fleet(args.manifest))
    ray.init(address=args.ray_address, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        deploy_stub_tiers(keys, owner=fleet_owner(args.store_url))
        print("stub tiers:", ", ".join(k.app_name for k in keys))
    finally:
        ray.shutdown()  # a driver's disconnect: Serve and the stubs run on


if __name__ == "__main__":
    main()
