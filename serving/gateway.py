"""The gateway: a FastAPI ingress deployment on Ray Serve in front of the tier deployments.

HTTP in, ``GatewayCore`` (routing, guardrails, cache, telemetry) in the middle, tier
deployment handles out. The OpenAI surface (JSON or server-sent events, OpenAI's error
shape for every refusal, unknown path and uncaught error) is ``serving.openai_http``. A
background thread polls the store's active pointer every ``reload_interval_s``; when a
new version is active it first deploys any tier deployment the new policy needs that is
not running, then swaps the policy in one assignment. It follows a running canary the same
way: the canary's version serves its share of new tasks beside the active one. Requests in
flight keep the policy snapshot they started with.

API keys (``serving.apikeys``): every endpoint but ``/healthz`` checks the caller's key
against the store (cached ``KEY_TTL_S`` seconds, so a revocation takes effect within
seconds); with ``require_keys`` a call without a valid key is refused (401), and a
completion is attributed to its key's team and repo. The reload thread also writes the
keys' last use back to the store.

The gateway application (``GATEWAY_APP``) and every tier it deploys on a reload carry the
fleet's owner marker (``serving.tiers.fleet_owner``): on a shared cluster it never reuses
or replaces another owner's application of the same name.

Budgets, task routes and the response cache live in one named Ray actor per (store,
fleet) that every replica calls (``serving.shared_state``), kept in the store, so any
number of replicas (``gateway_application``'s ``num_replicas``, or
``$AUTOPILOT_GATEWAY_REPLICAS`` where the caller passes none) agree on them and a
redeployed gateway keeps them.

This module imports Ray and FastAPI at import time: only ``serving.fleet`` imports it,
inside ``start_fleet``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from contracts.errors import PermanentError
from contracts.manifest import load_fleet
from policies.policy import validate_against_fleet
from serving.apikeys import KeyRing
from serving.engine import EngineOptions
from serving.gateway_core import GatewayCore, PolicyBook
from serving.openai_http import complete_response, install_error_handlers, openai_error
from serving.tiers import (
    OWNER_KEY,
    PRODUCT_OWNER,
    DeploymentKey,
    deploy_tiers,
    owner_config,
    required_deployments,
)

__all__ = ["GATEWAY_APP", "REPLICAS_ENV", "REPLICA_HEADER", "GatewayIngress", "gateway_application",
           "gateway_replicas"]

_log = logging.getLogger(__name__)
GATEWAY_APP = "gateway"
api = install_error_handlers(FastAPI(title="fleet-autopilot gateway"))
REPLICA_HEADER = "x-autopilot-replica"


class _ReplicaHeader:
    """Names the replica that answered (``x-autopilot-replica``), so a client or a test can
    see its calls spread over the replicas. Plain ASGI: no per-request task or buffering."""

    def __init__(self, app: Any):
        self.app = app
        self.replica: bytes | None = None

    def _replica(self) -> bytes:
        if self.replica is None:
            try:
                self.replica = serve.get_replica_context().replica_id.unique_id.encode()
            except Exception:  # noqa: BLE001 - outside Serve (direct tests): no name
                self.replica = b"local"
        return self.replica

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REPLICA_HEADER.encode(), self._replica())]}
            await send(message)

        await self.app(scope, receive, named)


api.add_middleware(_ReplicaHeader)
KEY_TTL_S = 2.0  # how long a key read from the store is trusted (revocation delay)
REPLICAS_ENV = "AUTOPILOT_GATEWAY_REPLICAS"


def gateway_replicas(requested: int | None = None) -> int:
    """The gateway's replica count: ``requested``, else ``$AUTOPILOT_GATEWAY_REPLICAS``,
    else 1 (the state is shared, so any count serves the same budgets)."""
    raw = requested if requested is not None else os.environ.get(REPLICAS_ENV, "1")
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise PermanentError(f"the gateway needs at least one replica (got {raw!r} from "
                             f"{'the caller' if requested is not None else REPLICAS_ENV})")
    return count


def _collector(config: dict[str, Any] | None):
    """``{"spec": CollectorSpec fields, "state_root": path, "blocked_prompt_sha256": [...]}``
    -> a collector, or None. The blocked hashes (gate-suite prompts) are required: a
    collector that could keep a gate prompt would leak the gates into training.

    Defined above the ingress class on purpose: ``serve.ingress`` pickles the class by
    value when it is decorated, capturing only the module globals that exist by then."""
    if not config:
        return None
    from serving.collector import CollectorSpec, VerifiedCollector

    spec = CollectorSpec.model_validate(config["spec"])
    if not spec.enabled:
        return None
    return VerifiedCollector.for_state(spec, config["state_root"],
                                       blocked=frozenset(config["blocked_prompt_sha256"]))


@serve.ingress(api)
class GatewayIngress:
    def __init__(self, manifest_path: str, store_url: str, engine_options: dict[str, Any],
                 spans_path: str | None, otlp_endpoint: str | None, reload_interval_s: float,
                 policy_version: int | None, seed: int = 0,
                 collector: dict[str, Any] | None = None, require_keys: bool = False,
                 owner: str = PRODUCT_OWNER, shared_state: bool = True):
        from serving.shared_state import connect_shared_state
        from store import Store
        from telemetry.otel import configure_tracing

        self.manifest_path = manifest_path
        self.owner = owner  # tiers deployed on a reload are the fleet's, like the gateway
        self.fleet = load_fleet(Path(manifest_path))
        self.engine_options = EngineOptions(**engine_options)
        self.store = Store.open(store_url)
        if policy_version is not None:
            initial = self.store.get_policy(policy_version).policy
        else:
            record = self.store.active_policy()
            if record is None:
                raise PermanentError("the store has no active policy: activate one first")
            initial = record.policy
        self.pinned_version = policy_version  # a fixed version never reloads
        self.keys = KeyRing(self.store.find_api_key, require=require_keys, ttl_s=KEY_TTL_S)
        self.provider = configure_tracing(otlp_endpoint=otlp_endpoint, jsonl_path=spans_path)
        tracer = self.provider.get_tracer("serving.gateway")
        book = PolicyBook(initial, self._load_version)
        # shared_state=False keeps the state in this replica (one replica only; the
        # benchmark's in-process baseline).
        state = (connect_shared_state(store_url, self.fleet.metadata.name,
                                      cache_entries=initial.spec.cache.response.max_entries)
                 if shared_state else None)
        self.core = GatewayCore(self.fleet, book, self._call_tier, tracer=tracer, seed=seed,
                                collector=_collector(collector), state=state)
        self._handles: dict[DeploymentKey, Any] = {}
        self._deploy_locks: dict[DeploymentKey, asyncio.Lock] = {}
        self._deploy_thread_lock = threading.Lock()
        self.reload_interval_s = reload_interval_s
        self.reload_error: str | None = None
        self._stop = threading.Event()
        self._reloader = threading.Thread(target=self._reload_loop, name="policy-reload",
                                          daemon=True)
        self._reloader.start()

    def _load_version(self, version: int):
        """A stored policy a request names (gate traffic); refused if the fleet lacks a tier,
        variant or adapter it names."""
        policy = self.store.get_policy(version).policy
        validate_against_fleet(policy, self.fleet)
        return policy

    # ------------------------------------------------------------------ tier handles
    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve hands over ``user_config``: only the owner marker (``serving.tiers``)."""
        self.owner = config.get(OWNER_KEY, self.owner)

    def _deploy(self, keys: list[DeploymentKey]) -> None:
        with self._deploy_thread_lock:
            # deploy_tiers skips what runs as ours and refuses another owner's application
            deploy_tiers(self.manifest_path, keys, self.engine_options, owner=self.owner)

    async def _call_tier(self, key: DeploymentKey, request: dict[str, Any]) -> dict[str, Any]:
        handle = self._handles.get(key)
        if handle is None:
            lock = self._deploy_locks.setdefault(key, asyncio.Lock())
            async with lock:
                handle = self._handles.get(key)
                if handle is None:
                    await asyncio.to_thread(self._deploy, [key])
                    handle = serve.get_app_handle(key.app_name)
                    self._handles[key] = handle
        return await handle.generate.remote(request)

    # ------------------------------------------------------------------------ reload
    def _reload_loop(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.store.mark_api_keys_used(self.keys.take_used())
            except Exception as exc:  # noqa: BLE001 - a usage note never stops serving
                _log.warning("could not record API key use: %s", exc)
            if self.pinned_version is not None:
                continue
            try:
                self.reload_once()
                self.reload_error = None
            except Exception as exc:  # noqa: BLE001 - keep serving the current policy
                self.reload_error = f"{type(exc).__name__}: {exc}"
                _log.error("policy reload failed; still serving v%d: %s",
                           self.core.policies.active.metadata.version, exc)

    def reload_once(self) -> bool:
        """Follow the store: the active pointer, then the running canary (if any)."""
        changed = self._reload_active()
        return self._reload_canary() or changed

    def _reload_active(self) -> bool:
        record = self.store.active_policy()
        current = self.core.policies.active
        if record is None or record.content_hash == current.content_hash and \
                record.version == current.metadata.version:
            return False
        validate_against_fleet(record.policy, self.fleet)  # refused: keep serving the old one
        needed = required_deployments(record.policy, self.fleet)
        self._deploy(needed)  # the new policy's tiers run before it takes any request
        self.core.policies.swap(record.policy)
        _log.info("policy v%d (%s) is active", record.version, record.content_hash[:12])
        return True

    def _reload_canary(self) -> bool:
        rollout = self.store.current_rollout()
        canary = self.core.policies.canary
        have = None if canary is None else (canary[0].metadata.version, canary[1])
        want = None if rollout is None else (rollout.candidate_version, rollout.share)
        if want == have:
            return False
        if rollout is None:
            self.core.policies.set_canary(None)
            _log.info("no canary: every new task on the active policy")
            return True
        policy = self._load_version(rollout.candidate_version)  # refused: keep the old one
        self._deploy(required_deployments(policy, self.fleet))
        self.core.policies.set_canary(policy, rollout.share)
        _log.info("canary v%d serves %.0f%% of new tasks", rollout.candidate_version,
                  100 * rollout.share)
        return True

    # --------------------------------------------------------------------- endpoints
    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await complete_response(request, "completion", self.core.complete, self.keys)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await complete_response(request, "chat", self.core.complete, self.keys)

    @api.post("/autopilot/verified")
    async def verified(self, request: Request):
        """The harness's verifier verdict on one attempt: ``{task_id, attempt, passed}``.
        A passed attempt of an opted-in family is added to the distillation training set
        (the gateway's own record of the call; docs/distillation.md)."""
        await self.keys.identify_async(request.headers)  # AccessRefused: 401 in OpenAI's shape
        try:
            body = await request.json()
            task_id, attempt, passed = body["task_id"], body["attempt"], body["passed"]
            if not (isinstance(task_id, str) and isinstance(attempt, int)
                    and isinstance(passed, bool)):
                raise TypeError("task_id must be a string, attempt an integer, passed a bool")
        except (ValueError, KeyError, TypeError) as exc:
            return openai_error(400, f"verified: {exc}", code="invalid_value")
        return await self.core.report_verified(task_id, attempt, passed)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "policy_version": self.core.policies.active.metadata.version,
                "reload_error": self.reload_error}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        await self.keys.identify_async(request.headers)
        ids = ["auto", *self.fleet.tier_names]
        return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}

    @api.get("/autopilot/policy")
    async def policy(self, request: Request) -> dict[str, Any]:
        await self.keys.identify_async(request.headers)
        p = self.core.policies.active
        canary = self.core.policies.canary
        return {"version": p.metadata.version, "content_hash": p.content_hash,
                "canary": None if canary is None else {
                    "version": canary[0].metadata.version,
                    "content_hash": canary[0].content_hash, "share": canary[1]}}

    @api.get("/autopilot/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        await self.keys.identify_async(request.headers)
        state = await self.core.state.stats()
        return {"cache": state["cache"], "tasks": state["tasks"],
                "deployments": sorted(k.app_name for k in self._handles),
                "reload_error": self.reload_error}

    @api.post("/autopilot/flush")
    async def flush(self, request: Request) -> dict[str, Any]:
        """Export finished spans now (the batch processor otherwise waits up to 5 s)."""
        await self.keys.identify_async(request.headers)
        ok = await asyncio.to_thread(self.provider.force_flush)
        return {"flushed": bool(ok)}

    def __del__(self):
        self._stop.set()
        provider = getattr(self, "provider", None)
        if provider is not None:
            provider.shutdown()


def gateway_application(manifest_path: str | Path, store_url: str, *,
                        engine_options: EngineOptions, spans_path: str | Path | None,
                        otlp_endpoint: str | None = None, reload_interval_s: float = 2.0,
                        policy_version: int | None = None, seed: int = 0,
                        collector: dict[str, Any] | None = None, require_keys: bool = False,
                        owner: str = PRODUCT_OWNER, num_replicas: int | None = None,
                        shared_state: bool = True):
    """The gateway's Serve application (bound, not yet running). ``num_replicas``: see
    ``gateway_replicas``; ``shared_state=False`` (one replica only) keeps budgets, routes
    and the cache in the replica's memory, as a baseline to measure the shared one by."""
    replicas = gateway_replicas(num_replicas)
    if not shared_state and replicas != 1:
        raise PermanentError(f"{replicas} gateway replicas need the shared state: each "
                             "replica would keep its own budgets")
    deployment = serve.deployment(
        GatewayIngress, name="Gateway", num_replicas=replicas,
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024,
        max_constructor_retry_count=1,
        # Spans are the per-request record; Serve's access log would add a write per call.
        logging_config={"enable_access_log": False},
        user_config=owner_config(owner),
    )
    return deployment.bind(str(Path(manifest_path).resolve()), store_url,
                           engine_options.as_dict(),
                           str(spans_path) if spans_path is not None else None, otlp_endpoint,
                           float(reload_interval_s), policy_version, seed, collector,
                           bool(require_keys), owner, bool(shared_state))
