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

Ownership on a shared cluster: every application the product deploys (tiers here, the
gateway in ``serving.gateway``) carries its owner in each deployment's ``user_config``
(``{OWNER_KEY: "fleet-autopilot/<fleet id>"}``, the fleet id a hash of the store URL, see
``fleet_owner``). Application names are cluster-wide, so an application of a name the
product needs that carries another owner (or none: another team's) is never replaced or
reused: ``refuse_foreign`` raises ``ApplicationNotOurs`` instead, and a fleet deletes only
applications carrying its own owner.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from contracts.manifest import FleetManifest
from policies.policy import Policy
from serving.engine import EngineOptions

__all__ = [
    "OWNER_KEY",
    "PRODUCT_OWNER",
    "ApiTierNotServable",
    "ApplicationNotOurs",
    "DeploymentKey",
    "ServeApp",
    "TierStartFailed",
    "cluster_apps",
    "deploy_tiers",
    "fleet_owner",
    "owner_config",
    "policy_tiers",
    "refuse_foreign",
    "required_deployments",
    "running_apps",
    "serve_client",
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


#: The key of the ownership marker in every product deployment's ``user_config``.
OWNER_KEY = "autopilot_owner"
#: The owner of applications deployed without a fleet (``deploy_tiers`` called directly).
PRODUCT_OWNER = "fleet-autopilot"


def fleet_owner(store_url: str) -> str:
    """The owner marker of the fleet serving ``store_url``: one store is one fleet, so a
    restart after a crash recognises (and reuses or deletes) its own applications, while
    another team's autopilot (another store) on the same cluster is someone else. The URL is
    hashed: it may hold a database password, and the marker is visible cluster-wide."""
    return f"{PRODUCT_OWNER}/{hashlib.sha256(store_url.encode()).hexdigest()[:16]}"


def owner_config(owner: str) -> dict[str, str]:
    """The ``user_config`` that marks a deployment as ``owner``'s."""
    return {OWNER_KEY: owner}


class ApplicationNotOurs(PermanentError):
    """A Serve application of a name the fleet needs exists on the cluster and belongs to
    someone else (another team, another autopilot fleet): refused, never replaced."""

    def __init__(self, names: Mapping[str, str | None], owner: str):
        self.names, self.owner = dict(names), owner
        listed = ", ".join(f"{name!r} ({f'owner {o!r}' if o else 'no autopilot owner'})"
                           for name, o in self.names.items())
        super().__init__(
            f"Serve application(s) {listed} already run on this cluster and were not "
            f"deployed by this fleet ({owner!r}); refusing to replace them. Use another "
            "cluster, or have their owner delete them (`serve.delete(name)`) if they are "
            "left over")


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


def deployment_key(policy: Policy, fleet: FleetManifest, tier: str,
                   variant: str | None = None) -> DeploymentKey:
    """The deployment serving ``tier`` under ``policy``: its policy variant unless
    ``variant`` names another (a shadow's own)."""
    name = fleet.tier(tier).variant(variant or policy.spec.quantization.get(tier)).name
    return DeploymentKey(tier, name, bool(policy.spec.cache.prefix.get(tier, False)))


def required_deployments(policy: Policy, fleet: FleetManifest) -> list[DeploymentKey]:
    """The deployments serving ``policy`` needs (one per tier it can route to, plus the
    variants its shadows run on).

    Raises ``ApiTierNotServable`` when one of them is an API-priced variant."""
    keys = sorted({deployment_key(policy, fleet, t) for t in policy_tiers(policy)}
                  | {deployment_key(policy, fleet, t, v)  # the variants shadows run
                     for t, v in policy.spec.routing.shadow_variants.items()})
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

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve hands over ``user_config``: only the owner marker, which stays in Serve's
        record of the deployment (what ``cluster_apps`` reads); nothing to apply."""
        self.owner = config.get(OWNER_KEY)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def tier_application(manifest_path: str | Path, key: DeploymentKey, options: EngineOptions,
                     owner: str = PRODUCT_OWNER):
    """The Serve application for one tier deployment (bound, not yet running), marked as
    ``owner``'s."""
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
        user_config=owner_config(owner),
    )
    return deployment.bind(str(Path(manifest_path).resolve()), key.tier, key.variant,
                           key.prefix_caching, options.as_dict())


@dataclass(frozen=True)
class ServeApp:
    """One application on the cluster's Serve, as ``cluster_apps`` reads it."""

    name: str
    status: str
    route_prefix: str | None
    owner: str | None  # the OWNER_KEY marker of its deployments; None: not the product's


def serve_client():
    """The running Serve controller's client, or None when Serve does not run.

    Ray's public API (2.60) exposes neither the HTTP options of a running Serve nor a
    deployment's ``user_config``; its client does. Kept in one place for a Ray upgrade."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def cluster_apps() -> dict[str, ServeApp]:
    """Every application on the connected cluster's Serve (none when Serve does not run),
    with its status, route prefix and owner marker."""
    client = serve_client()
    if client is None:
        return {}
    apps: dict[str, ServeApp] = {}
    for name, app in client.get_serve_details().get("applications", {}).items():
        owners = {((d.get("deployment_config") or {}).get("user_config") or {}).get(OWNER_KEY)
                  for d in (app.get("deployments") or {}).values()}
        # one owner across every deployment, or it is not (wholly) ours
        owner = owners.pop() if len(owners) == 1 else None
        status = app.get("status")
        apps[name] = ServeApp(name=name, status=str(getattr(status, "value", status)),
                              route_prefix=app.get("route_prefix"),
                              owner=owner if isinstance(owner, str) else None)
    return apps


def refuse_foreign(apps: Mapping[str, ServeApp], names: Iterable[str], owner: str) -> None:
    """Raise ``ApplicationNotOurs`` for the names in ``apps`` whose owner is not ``owner``."""
    foreign = {n: apps[n].owner for n in names if n in apps and apps[n].owner != owner}
    if foreign:
        raise ApplicationNotOurs(foreign, owner)


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
                 options: EngineOptions, owner: str = PRODUCT_OWNER) -> dict[DeploymentKey, Any]:
    """Deploy every key not already running as ``owner``'s; wait until each runs; return
    their handles.

    A deployment whose replica cannot start (a pinned file mismatch, a bad model) is
    deleted again and raises ``TierStartFailed`` with the replica's error in the message.
    A key naming an API-priced variant raises ``ApiTierNotServable`` before Serve is called;
    a key whose application exists with another owner raises ``ApplicationNotOurs`` before
    anything is deployed (it is neither reused nor replaced).
    """
    from contracts.manifest import load_fleet

    keys = list(dict.fromkeys(keys))
    refuse_api_priced(load_fleet(manifest_path), keys)
    from ray import serve

    apps = cluster_apps()
    refuse_foreign(apps, [k.app_name for k in keys], owner)
    missing = [k for k in keys if k.app_name not in apps or apps[k.app_name].status != "RUNNING"]
    if missing:
        _log.info("deploying %s", ", ".join(k.app_name for k in missing))
        targets = [serve.RunTarget(target=tier_application(manifest_path, k, options, owner),
                                   name=k.app_name, route_prefix=None) for k in missing]
        try:
            # Engines start side by side: most of a start is waiting on process spawns.
            serve.run_many(targets)
        except Exception as exc:  # noqa: BLE001 - Serve: a failed constructor is a RuntimeError
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
