"""Tier deployments: one Ray Serve application per (tier, variant, prefix caching), each
owning one vLLM engine started from pinned weights.

Each deployment is its own Serve application (no HTTP route) so the gateway can add the
variants a new policy needs while the others keep serving. The replica checks every
weight and adapter file against the manifest before the engine starts
(``serving.engine.verify_variant``); on a mismatch the constructor raises, Serve gives up
after one try, and ``deploy_tiers`` raises ``TierStartFailed`` naming the file.

``required_deployments`` (pure) says which deployments a policy needs, and refuses a policy
that would need an API-priced variant (no weights: the local engine cannot serve it) with
``ApiTierNotServable`` naming the tier, before anything starts; ``deploy_tiers`` refuses
such a key too, so no engine ever tries to load one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from contracts.manifest import FleetManifest
from policies.policy import Policy
from serving.engine import EngineOptions

__all__ = [
    "ApiTierNotServable",
    "DeploymentKey",
    "TierStartFailed",
    "deploy_tiers",
    "policy_tiers",
    "required_deployments",
    "running_apps",
    "tier_application",
]

_log = logging.getLogger(__name__)


class TierStartFailed(PermanentError):
    """A tier deployment did not start (for example a pinned file does not match)."""


class ApiTierNotServable(TierStartFailed):
    """A policy needs an API-priced tier variant through the local engine (vLLM), which
    cannot serve it: it has no weights. Raised before anything is deployed."""

    def __init__(self, tier: str, variant: str):
        self.tier, self.variant = tier, variant
        super().__init__(
            f"tier {tier!r} (variant {variant!r}) is API-priced: it has no weights, so the "
            "local engine (vLLM) cannot serve it; remove it from the policy's escalation "
            "orders and distillation, or give the variant self-hosted economics and weights")


def refuse_api_priced(fleet: FleetManifest, keys: Iterable[DeploymentKey]) -> None:
    """Raise ``ApiTierNotServable`` for the first key whose variant is API-priced."""
    for key in keys:
        if fleet.tier(key.tier).variant(key.variant).api_priced:
            raise ApiTierNotServable(key.tier, key.variant)


@dataclass(frozen=True, order=True)
class DeploymentKey:
    """What one tier deployment serves: a tier, its variant, and whether prefix caching is on."""

    tier: str
    variant: str
    prefix_caching: bool

    @property
    def app_name(self) -> str:
        return f"tier-{self.tier}-{self.variant}-{'pc' if self.prefix_caching else 'nopc'}"

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "variant": self.variant, "prefix_caching": self.prefix_caching}


def policy_tiers(policy: Policy) -> list[str]:
    """Every tier a policy can route to: escalation orders (policy-wide and per family),
    distillation targets and shadow tiers, in first-seen order."""
    spec = policy.spec
    seen: list[str] = []
    orders = [spec.routing.escalation] + [o.escalation or [] for o in spec.routing.families.values()]
    orders.append([d.tier for d in spec.distillation.values()])
    orders.append(spec.routing.shadow_tiers)  # shadows may run on tiers outside every order
    for order in orders:
        for tier in order:
            if tier not in seen:
                seen.append(tier)
    return seen


def deployment_key(policy: Policy, fleet: FleetManifest, tier: str) -> DeploymentKey:
    variant = fleet.tier(tier).variant(policy.spec.quantization.get(tier)).name
    return DeploymentKey(tier, variant, bool(policy.spec.cache.prefix.get(tier, False)))


def required_deployments(policy: Policy, fleet: FleetManifest) -> list[DeploymentKey]:
    """The deployments serving ``policy`` needs (one per tier it can route to).

    Raises ``ApiTierNotServable`` when one of them is an API-priced variant."""
    keys = sorted({deployment_key(policy, fleet, t) for t in policy_tiers(policy)})
    refuse_api_priced(fleet, keys)
    return keys


class TierReplica:
    """The body of a tier deployment: one ``TierEngine``; ``generate`` takes a plain dict."""

    def __init__(self, manifest_path: str, tier: str, variant: str, prefix_caching: bool,
                 options: dict[str, Any]):
        from serving.engine import TierEngine

        started = time.monotonic()
        self.engine = TierEngine.start(manifest_path, tier, variant,
                                       prefix_caching=prefix_caching,
                                       options=EngineOptions(**options))
        self.start_s = time.monotonic() - started

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        g = await self.engine.generate(
            request["prompt"], int(request.get("max_tokens", 32)),
            tuple(request.get("stop") or ()), request.get("adapter"))
        return g._asdict()

    async def info(self) -> dict[str, Any]:
        p = self.engine.pinned
        return {"tier": p.tier, "variant": p.variant, "prefix_caching": self.engine.prefix_caching,
                "weights_digest": p.weights_digest,
                "adapters": {a: p.adapter_digest(a) for a in self.engine.adapters},
                "start_s": self.start_s}

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def tier_application(manifest_path: str | Path, key: DeploymentKey, options: EngineOptions):
    """The Serve application for one tier deployment (bound, not yet running)."""
    from ray import serve

    deployment = serve.deployment(
        TierReplica,
        name="TierReplica",
        num_replicas=1,
        # vLLM runs its own processes; Ray's CPU accounting would only block co-location.
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
        max_constructor_retry_count=1,
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=20,
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(str(Path(manifest_path).resolve()), key.tier, key.variant,
                           key.prefix_caching, options.as_dict())


def running_apps() -> dict[str, str]:
    """Serve application name -> status, for the applications on the connected cluster."""
    from ray import serve

    return {name: str(getattr(app.status, "value", app.status))
            for name, app in serve.status().applications.items()}


def _replica_error(app_name: str) -> str | None:
    """The last line of the replica's traceback that Serve recorded (the actual refusal)."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001 - the status is a courtesy; the caller still raises
        return None
    if app is None:
        return None
    messages = [d.message for d in app.deployments.values() if d.message] + [app.message or ""]
    for message in messages:
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        for line in reversed(lines):
            if "Error" in line.split(":", 1)[0] or "Mismatch" in line.split(":", 1)[0]:
                return line
    return None


def deploy_tiers(manifest_path: str | Path, keys: Iterable[DeploymentKey],
                 options: EngineOptions) -> dict[DeploymentKey, Any]:
    """Deploy every key not already running; wait until each runs; return their handles.

    A deployment whose replica cannot start (a pinned file mismatch, a bad model) is
    deleted again and raises ``TierStartFailed`` with the replica's error in the message.
    A key naming an API-priced variant raises ``ApiTierNotServable`` before Serve is called.
    """
    from contracts.manifest import load_fleet

    keys = list(dict.fromkeys(keys))
    refuse_api_priced(load_fleet(manifest_path), keys)
    from ray import serve

    running = running_apps()
    missing = [k for k in keys if running.get(k.app_name) != "RUNNING"]
    if missing:
        _log.info("deploying %s", ", ".join(k.app_name for k in missing))
        targets = [serve.RunTarget(target=tier_application(manifest_path, k, options),
                                   name=k.app_name, route_prefix=None) for k in missing]
        try:
            # Engines start side by side: most of a start is waiting on process spawns.
            serve.run_many(targets)
        except Exception as exc:  # Serve reports a failed constructor as RuntimeError
            status = running_apps()
            failed = [k for k in missing if status.get(k.app_name) != "RUNNING"] or missing
            failures = [f"{k.app_name}: {_replica_error(k.app_name) or exc}" for k in failed]
            for k in failed:
                try:
                    serve.delete(k.app_name)
                except Exception:  # noqa: BLE001 - best effort clean-up of the failed app
                    _log.warning("could not delete failed application %s", k.app_name)
            raise TierStartFailed("tier deployment(s) failed to start: "
                                  + " | ".join(failures)) from None
    return {k: serve.get_app_handle(k.app_name) for k in keys}
