"""What the gateway does with one request, without Ray or HTTP (so it is tested directly).

``GatewayCore.complete`` applies a policy to a parsed request: routing via
``policies.routing`` (seeded draws per task id, remembered per task), guardrails
(``serving.guardrails``), the response cache (``serving.cache``), the tier call (an
injected coroutine: a Ray Serve handle in the product, a fake in unit tests), shadow runs,
pricing, and one ``llm.call`` span per model call. Policies are values: a request takes a
snapshot of the policy when it starts and keeps it to the end, so a reload never changes a
request in flight.

Serve traffic (any purpose but ``gate``) never chooses what budgets it: its
``policy_version`` is ignored (a task is served under the active policy, or the canary for
its share, and keeps that version), its ``clock_offset_ns`` moves span times only (the
budget day is the gateway's clock), and a request without a team is held against
``serving.guardrails.UNATTRIBUTED_TEAM``. Gate traffic may name a stored policy version.
Every call reserves its worst case before it runs and settles after
(``serving.guardrails.BudgetLedger``); the task's route, the check and the reservation are
one step of the gateway's state (``serving.shared_state``: this process's own, or one
actor every replica calls), so concurrent calls overspend a cap by at most one request's
reservation, however many replicas serve them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.errors import PermanentError
from contracts.manifest import FleetManifest
from contracts.spans import GENAI_PROVIDER, SPAN_CALL, Attr, CacheStatus, GenAI, Purpose
from policies.policy import Policy
from policies.routing import (
    attempt_tier_probabilities,
    choose_start,
    in_canary,
    resolve_routing,
    shadow_adapter,
    shadow_probability,
    shadow_tier,
    shadow_variant,
    tier_plan,
)
from serving.cache import CacheScope, ResponseCache, cache_allowed
from serving.guardrails import BudgetLedger, attributed_team, call_cost_usd
from serving.protocol import ParsedRequest, completion_body
from serving.shared_state import (
    Admission,
    GatewayState,
    LocalStateClient,
    TaskRoute,
    worst_case_of,
)
from serving.tiers import DeploymentKey

__all__ = [
    "GatewayCore",
    "PolicyBook",
    "RouteDecision",
    "TaskRoute",
    "UnknownModel",
    "task_draws",
    "variant_digests",
]

_log = logging.getLogger(__name__)
TierCaller = Callable[[DeploymentKey, dict[str, Any]], Awaitable[dict[str, Any]]]


# The gateway raises the contracts' one refusal type; the old name stays importable.


class UnknownModel(PermanentError):
    """``model`` names neither ``auto`` nor a tier of the fleet (HTTP 400)."""


def task_draws(task_id: str, seed: int = 0) -> tuple[float, float, float, float]:
    """Four uniform draws in [0, 1) fixed by the task id: explore, explore pick, shadow,
    shadow pick. A caller can reproduce the gateway's choices for a task from them."""
    out = []
    for name in ("explore", "explore-pick", "shadow", "shadow-pick"):
        h = hashlib.sha256(f"{seed}:{task_id}:{name}".encode()).digest()
        out.append(int.from_bytes(h[:8], "big") / 2.0**64)
    return tuple(out)  # type: ignore[return-value]


def variant_digests(fleet: FleetManifest, tier: str, variant: str) -> tuple[str, dict[str, str]]:
    """The weights digest and per-adapter digests of a variant, from the manifest's pins
    (the replica checked the files against the same pins before it started)."""
    from serving.engine import _digest

    v = fleet.tier(tier).variant(variant)
    return _digest(v.files), {a.name: _digest(a.files) for a in v.adapters}


@dataclass(frozen=True)
class RouteDecision:
    tier: str
    variant: str
    adapter: str | None
    propensity: float
    max_attempts: int
    shadow_tier: str | None
    shadow_propensity: float | None = None  # the shadow's odds (policies.routing)
    shadow_adapter: str | None = None  # the family's shadow adapter there (exploration)


class PolicyBook:
    """The active policy and any stored version a request names, as immutable snapshots."""

    def __init__(self, active: Policy, load_version: Callable[[int], Policy]):
        self._active = active
        self._load_version = load_version
        self._versions: dict[int, Policy] = {active.metadata.version: active}
        self._canary: tuple[Policy, float] | None = None

    @property
    def active(self) -> Policy:
        return self._active

    @property
    def canary(self) -> tuple[Policy, float] | None:
        """The canary policy and the share of new tasks it serves, or None."""
        return self._canary

    def set_canary(self, policy: Policy | None, share: float = 0.0) -> None:
        if policy is None:
            self._canary = None
            return
        self._versions[policy.metadata.version] = policy
        self._canary = (policy, share)  # one reference assignment: atomic for readers

    def for_new_task(self, task_id: str) -> Policy:
        """The policy a new task starts under: the canary for its share of tasks (a stable
        hash of the task id, ``policies.routing.in_canary``), else the active one."""
        canary = self._canary
        if canary is not None and in_canary(task_id, canary[1]):
            return canary[0]
        return self._active

    def swap(self, policy: Policy) -> None:
        self._versions[policy.metadata.version] = policy
        self._active = policy  # one reference assignment: atomic for readers

    async def get(self, version: int | None) -> Policy:
        if version is None:
            return self._active
        policy = self._versions.get(version)
        if policy is None:
            policy = await asyncio.to_thread(self._load_version, version)
            self._versions[version] = policy
        return policy


class GatewayCore:
    def __init__(self, fleet: FleetManifest, policies: PolicyBook, call_tier: TierCaller, *,
                 tracer: Any = None, seed: int = 0, clock: Callable[[], float] = time.time,
                 max_tasks: int = 200_000, collector: Any = None, state: Any = None):
        self.fleet = fleet
        # Distillation training set (serving.collector.VerifiedCollector); None: off.
        self.collector = collector
        self.policies = policies
        self.call_tier = call_tier
        self.tracer = tracer
        self.seed = seed
        self.clock = clock
        # Budgets, routes and the response cache: this process's own by default, or a
        # client of the state every replica shares (serving.shared_state).
        self.state = state or LocalStateClient(GatewayState(
            max_tasks, policies.active.spec.cache.response.max_entries))
        self.max_tasks = max_tasks
        self._digests: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}

    def _local_state(self) -> GatewayState:
        if self.state.shared:
            raise AttributeError("this gateway's state is shared: read it through self.state")
        return self.state.state

    @property
    def ledger(self) -> BudgetLedger:
        return self._local_state().ledger

    @property
    def routes(self) -> OrderedDict[str, TaskRoute]:
        return self._local_state().routes

    @property
    def cache(self) -> ResponseCache:
        return self._local_state().cache

    # ----------------------------------------------------------------------- routing
    def _new_task_route(self, policy: Policy, req: ParsedRequest) -> TaskRoute:
        """The route a task starts on (what it was recorded with wins: ``complete``)."""
        family = req.ctx.family or ""
        explore, pick, shadow_draw, shadow_pick = task_draws(req.task_id, self.seed)
        if req.ctx.purpose != "serve":
            # Gate and evaluation traffic follows the policy's own routing, never its
            # exploration: a gate run must reproduce under fresh task ids.
            explore = 1.0
        start, propensity = choose_start(policy, family, req.ctx.features, explore, pick)
        first = tier_plan(policy, family, req.ctx.features, start=start)[0].tier
        shadow = shadow_tier(policy, family, first, shadow_draw, shadow_pick)
        return TaskRoute(policy.metadata.version, start, propensity, shadow)

    async def route(self, req: ParsedRequest) -> tuple[Policy, RouteDecision]:
        """The policy snapshot and the tier this attempt uses (as this replica knows the
        task's route; ``complete`` settles it with the state)."""
        policy, decision, _ = await self._plan(req, None)
        return policy, decision

    async def _plan(self, req: ParsedRequest, recorded: TaskRoute | None,
                    ) -> tuple[Policy, RouteDecision, TaskRoute | None]:
        """The policy snapshot, this attempt's decision, and the task's route it follows
        (``recorded``, else the one this replica knows, else a new one; None for a call
        that names its tier)."""
        named = self._named_version(req)
        known = recorded or self.state.known_route(req.task_id)
        if named is None and req.ctx.purpose == "serve" and known is None:
            policy = self.policies.for_new_task(req.task_id)  # a canary's share, or active
        else:
            policy = await self.policies.get(named)
        family = req.ctx.family or ""
        routing = resolve_routing(policy, family)
        if req.model != "auto":
            if req.model not in self.fleet.tier_names:
                raise UnknownModel(f"model {req.model!r} is neither 'auto' nor a fleet tier "
                                   f"({', '.join(self.fleet.tier_names)})")
            tier = req.model
            variant = self.fleet.tier(tier).variant(policy.spec.quantization.get(tier)).name
            adapter = routing.adapter if tier == routing.adapter_tier else None
            return policy, RouteDecision(tier, variant, adapter, 1.0, routing.max_attempts,
                                         None), None
        route = known or self._new_task_route(policy, req)
        if route.policy_version != policy.metadata.version and named is None:
            # A task keeps the policy it started under, so its attempts escalate consistently.
            policy = await self.policies.get(route.policy_version)
            routing = resolve_routing(policy, family)
        plan = tier_plan(policy, family, req.ctx.features, start=route.start)
        if req.attempt > len(plan):
            return policy, RouteDecision(plan[-1].tier, "", None, 0.0, len(plan), None), route
        step = plan[req.attempt - 1]
        variant = self.fleet.tier(step.tier).variant(step.variant).name
        probs = attempt_tier_probabilities(policy, family, req.ctx.features)
        propensity = probs[req.attempt - 1].get(step.tier, 0.0)
        shadow = route.shadow_tier if req.attempt == 1 and req.ctx.purpose == "serve" else None
        odds = None if shadow is None else shadow_probability(routing, step.tier, shadow)
        s_adapter = None if shadow is None else shadow_adapter(routing, shadow)
        return policy, RouteDecision(step.tier, variant, step.adapter, propensity,
                                     routing.max_attempts, shadow, odds, s_adapter), route

    @staticmethod
    def _named_version(req: ParsedRequest) -> int | None:
        """The policy version a request may name: gate traffic's; serve traffic's is
        ignored (it is served under the active policy or the canary for its share)."""
        return req.ctx.policy_version if req.ctx.purpose == "gate" else None

    # -------------------------------------------------------------------- the request
    def _day(self) -> str:
        """The budget day (UTC) by the gateway's own clock (a client's clock offset moves
        its span times, never the day its spend is held against)."""
        return datetime.fromtimestamp(self.clock(), tz=UTC).strftime("%Y-%m-%d")

    async def complete(self, req: ParsedRequest) -> dict[str, Any]:
        recorded = None
        for _ in range(2):
            policy, decision, route = await self._plan(req, recorded)
            guard = policy.spec.guardrails
            team = attributed_team(req.ctx.team, serve=req.ctx.purpose != "gate")
            day = self._day()
            targets = [(decision.tier, decision.variant, decision.adapter, req.ctx.purpose,
                        req.ctx.traceparent, True)]
            if decision.shadow_tier is not None:
                s_tier = decision.shadow_tier
                s_variant = self.fleet.tier(s_tier).variant(shadow_variant(policy, s_tier)).name
                targets.append((s_tier, s_variant, decision.shadow_adapter, str(Purpose.SHADOW),
                                req.ctx.shadow_traceparent or req.ctx.traceparent, False))
            # The route, the caps' check and the worst-case reservations are one step of
            # the state (serving.shared_state): no concurrent call sees the spend without
            # this call's share, in this replica or another.
            admitted = await self.state.admit(Admission(
                req.task_id, team, day, req.attempt, decision.max_attempts, req.max_tokens,
                guard, tuple((for_task, worst_case_of(self.fleet, tier, variant, req.prompt))
                             for tier, variant, _, _, _, for_task in targets), route))
            if not admitted.conflicts(route):
                break
            recorded = admitted.route  # the task started elsewhere: follow its plan
        else:  # pragma: no cover - a recorded route never changes, so one retry agrees
            raise PermanentError(f"task {req.task_id}: its route changed while admitting")
        admitted.raise_refusal()
        max_tokens = admitted.max_tokens
        budget = guard.team_budgets.get(team) if team is not None else None
        settled: set[int] = set()
        try:
            results = await asyncio.gather(*[
                self._call(policy, req, tier, variant, adapter, max_tokens, purpose=purpose,
                           traceparent=parent, ticket=ticket, budget=budget, settled=settled)
                for (tier, variant, adapter, purpose, parent, _), ticket
                in zip(targets, admitted.tickets, strict=True)])
        finally:
            unsettled = tuple(t for t in admitted.tickets if t not in settled)
            if unsettled:  # a failed or cancelled call gives its hold back
                await self._release(unsettled)
        main = results[0]
        if self.collector is not None:
            self.collector.remember(
                policy, task_id=req.task_id, attempt=req.attempt, family=req.ctx.family,
                purpose=req.ctx.purpose, prompt=req.prompt, text=main["text"],
                tier=main["tier"], variant=main["variant"], adapter=main["adapter"])
        fields = self._autopilot_fields(policy, main, decision.propensity)
        if len(results) > 1:
            shadow = results[1]
            fields["shadow"] = {**self._autopilot_fields(policy, shadow,
                                                         decision.shadow_propensity),
                                "text": shadow["text"]}
        return completion_body(
            req.kind, text=main["text"], finish_reason=main.get("finish_reason"),
            model=f"{main['tier']}/{main['variant']}", input_tokens=main["input_tokens"],
            output_tokens=main["output_tokens"], cached_input_tokens=main["cached_input_tokens"],
            autopilot=fields)

    async def report_verified(self, task_id: str, attempt: int, passed: bool) -> dict[str, Any]:
        """The harness's verifier verdict on one attempt (distillation training set)."""
        if self.collector is None:
            return {"stored": False, "reason": "collection is off"}
        return await asyncio.to_thread(self.collector.report, task_id, attempt, passed)

    def _autopilot_fields(self, policy: Policy, r: dict[str, Any],
                          propensity: float | None) -> dict[str, Any]:
        return {
            "tier": r["tier"], "variant": r["variant"], "adapter": r["adapter"],
            "cache": r["cache"], "policy_version": policy.metadata.version,
            "policy_hash": policy.content_hash, "propensity": propensity,
            "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
            "cached_input_tokens": r["cached_input_tokens"], "latency_ms": r["latency_ms"],
            "cost_usd": r["cost_usd"], "shadow": None,
        }

    async def _release(self, tickets: tuple[int, ...]) -> None:
        try:
            await self.state.release(tickets)
        except Exception as exc:  # noqa: BLE001 - never hide the call's own error
            _log.error("could not release reservations %s: %s", tickets, exc)

    def _digest(self, tier: str, variant: str) -> tuple[str, dict[str, str]]:
        key = (tier, variant)
        if key not in self._digests:
            self._digests[key] = variant_digests(self.fleet, tier, variant)
        return self._digests[key]

    async def _call(self, policy: Policy, req: ParsedRequest, tier: str, variant: str,
                    adapter: str | None, max_tokens: int, *, purpose: str,
                    traceparent: str | None, ticket: int, budget: Any,
                    settled: set[int]) -> dict[str, Any]:
        started = time.perf_counter()
        spec = policy.spec.cache.response
        prefix = bool(policy.spec.cache.prefix.get(tier, False))
        weights_digest, adapter_digests = self._digest(tier, variant)
        scope = CacheScope(tier, variant, adapter, weights_digest,
                           adapter_digests.get(adapter, "") if adapter else "",
                           policy.content_hash, max_tokens, req.stop)
        use_cache = cache_allowed(spec, req.ctx.family, request_mode=req.ctx.response_cache,
                                  purpose=purpose)
        offset = req.ctx.clock_offset_ns
        span = self._start_span(traceparent, offset)
        try:
            hit = None
            now = self.clock()
            if use_cache:
                hit = await self.state.cache_get(scope, req.prompt, now, mode=spec.mode,
                                                 threshold=spec.similarity_threshold,
                                                 max_entries=spec.max_entries)
            if hit is not None:
                value = hit
                out = {"text": value["text"], "finish_reason": value.get("finish_reason"),
                       "input_tokens": value["input_tokens"],
                       "output_tokens": value["output_tokens"],
                       "cached_input_tokens": value["input_tokens"]}
                cache = str(CacheStatus.RESPONSE)
            else:
                out = await self.call_tier(
                    DeploymentKey(tier, variant, prefix),
                    {"prompt": req.prompt, "max_tokens": max_tokens, "stop": list(req.stop),
                     "adapter": adapter})
                cache = str(CacheStatus.PREFIX if out["cached_input_tokens"] > 0
                            else CacheStatus.MISS)
            cost = call_cost_usd(self.fleet, tier, variant, input_tokens=out["input_tokens"],
                                 cached_input_tokens=out["cached_input_tokens"],
                                 output_tokens=out["output_tokens"], cache=cache)
            # Release the worst case, record the actual (on the task, team and day reserved;
            # the gateway's own shadow call counts for the team only) and keep a fresh
            # answer in the cache, in one step of the state.
            alert = await self.state.settle(
                ticket, tokens=(out["input_tokens"] + out["output_tokens"]
                                if cache != CacheStatus.RESPONSE else 0),
                usd=cost, attempt=req.attempt, budget=budget,
                cache_put=((scope, req.prompt, out, now, spec.ttl_s)
                           if use_cache and hit is None else None))
            settled.add(ticket)
            if alert is not None:
                _log.warning("team %s reached %.0f%% of its daily budget: $%.6f of $%.6f",
                             attributed_team(req.ctx.team, serve=req.ctx.purpose != "gate"),
                             100 * alert[0], alert[1], budget.usd_per_day)
            result = {**out, "tier": tier, "variant": variant, "adapter": adapter,
                      "cache": cache, "cost_usd": cost,
                      "latency_ms": (time.perf_counter() - started) * 1000.0}
            if span is not None:
                self._set_call_attributes(span, policy, req, result, purpose)
            return result
        except BaseException as exc:
            if span is not None:
                from opentelemetry.trace import Status, StatusCode

                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
        finally:
            if span is not None:
                span.end(end_time=time.time_ns() + offset)

    def _start_span(self, traceparent: str | None, offset_ns: int = 0):
        if self.tracer is None:
            return None
        context = None
        if traceparent:
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        return self.tracer.start_span(SPAN_CALL, context=context,
                                      start_time=time.time_ns() + offset_ns)

    def _set_call_attributes(self, span: Any, policy: Policy, req: ParsedRequest,
                             r: dict[str, Any], purpose: str) -> None:
        from telemetry.otel import set_span_attributes

        # GenAI semantic conventions beside the product's own keys: the model asked for
        # ("auto" or a tier) and the one that served (tier/variant, as the answer's
        # "model"), the operation, the provider (the fleet) and the cache-read tokens.
        set_span_attributes(span, {
            Attr.REQUEST_MODEL: req.model,
            GenAI.RESPONSE_MODEL: f"{r['tier']}/{r['variant']}",
            GenAI.OPERATION_NAME: "chat" if req.kind == "chat" else "text_completion",
            GenAI.PROVIDER_NAME: GENAI_PROVIDER,
            GenAI.CACHE_READ_INPUT_TOKENS: int(r["cached_input_tokens"]),
            Attr.INPUT_TOKENS: int(r["input_tokens"]),
            Attr.OUTPUT_TOKENS: int(r["output_tokens"]),
            Attr.TIER: r["tier"],
            Attr.VARIANT: r["variant"],
            Attr.ADAPTER: r["adapter"],
            Attr.CACHE: r["cache"],
            Attr.CACHED_INPUT_TOKENS: int(r["cached_input_tokens"]),
            Attr.TASK_ID: req.task_id,
            Attr.ATTEMPT: req.attempt,
            Attr.POLICY_VERSION: policy.metadata.version,
            Attr.PURPOSE: purpose,
        })
