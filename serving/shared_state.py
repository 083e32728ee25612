"""The gateway's state that every replica must agree on: budgets, task routes and the
response cache (issue 15, defect 7).

``GatewayState`` holds them in one process: the ``BudgetLedger`` (``serving.guardrails``),
each task's ``TaskRoute`` and the ``ResponseCache``. Its ``admit`` is the gateway's one
admission step: the task's route (the first one recorded wins), the guardrail check, the
clip of ``max_tokens`` and the worst-case reservations, with nothing in between, so
concurrent calls overspend a cap by at most one reservation. The gateway reaches it through
a client:

- ``LocalStateClient``: in the gateway's own process (unit tests, one in-process core).
  ``admit`` has no ``await`` inside, so it is one step of the event loop.
- ``ActorStateClient``: one named Ray actor per (store, fleet), ``GatewayStateActor``, that
  every gateway replica calls. An actor runs one call at a time, so ``admit`` is atomic
  across replicas: one round trip admits a call, one settles it (and stores its answer in
  the cache). The actor is detached (a redeployed gateway finds it again) and writes what
  it records to the store every ``FLUSH_INTERVAL_S`` (``store.ledger``); a new actor
  rebuilds the recorded spend of the last two UTC days, the tasks' spend and their routes
  from the store, so a restarted gateway keeps every recorded dollar (a crash loses at
  most the last flush interval's). The response cache lives only in the actor's memory.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.errors import TransientError
from contracts.guardrails import GuardrailRefusal
from contracts.spans import CacheStatus
from serving.cache import CacheScope, ResponseCache
from serving.guardrails import (
    BudgetLedger,
    Reservation,
    budget_alert_level,
    call_cost_usd,
    check_call,
    clip_max_tokens,
    prompt_tokens_bound,
)

__all__ = [
    "FLUSH_INTERVAL_S",
    "STATE_NAMESPACE",
    "ActorStateClient",
    "Admission",
    "Admitted",
    "GatewayState",
    "GatewayStateActor",
    "LocalStateClient",
    "SharedStateUnavailable",
    "TaskRoute",
    "WorstCase",
    "connect_shared_state",
    "state_actor_name",
    "stop_shared_state",
    "worst_case_of",
]

_log = logging.getLogger(__name__)
STATE_NAMESPACE = "fleet_autopilot"
FLUSH_INTERVAL_S = 0.25
DEFAULT_MAX_TASKS = 200_000


class SharedStateUnavailable(TransientError):
    """The gateway's shared ledger could not be reached (its actor died or restarts)."""


@dataclass(frozen=True)
class TaskRoute:
    """What the gateway decided at a task's first attempt (kept for its later attempts)."""

    policy_version: int
    start: int
    start_propensity: float
    shadow_tier: str | None


@dataclass(frozen=True)
class WorstCase:
    """The most one call may spend, as a function of its ``max_tokens``: the prompt's token
    bound uncached at the prefill price plus the output at the decode price, or a
    response-cache hit's price if that is more (``serving.guardrails.worst_case_cost``'s
    rule, carried as numbers so the ledger needs no fleet manifest)."""

    prompt_tokens: int
    usd_per_input_token: float
    usd_per_output_token: float
    floor_usd: float

    def at(self, max_tokens: int) -> tuple[int, float]:
        out = max(int(max_tokens), 0)
        usd = self.prompt_tokens * self.usd_per_input_token + out * self.usd_per_output_token
        return self.prompt_tokens + out, max(usd, self.floor_usd)


def worst_case_of(fleet: Any, tier: str, variant: str | None, prompt: str) -> WorstCase:
    bound = prompt_tokens_bound(prompt)
    economics = fleet.economics(tier, variant)
    floor = call_cost_usd(fleet, tier, variant, input_tokens=0, cached_input_tokens=0,
                          output_tokens=0, cache=CacheStatus.RESPONSE)
    return WorstCase(bound, economics.usd_per_input_token, economics.usd_per_output_token,
                     float(floor))


@dataclass(frozen=True)
class Admission:
    """One request's admission: its route as the replica computed it (None for a call that
    names its tier), the caps to check, and the worst case of each call it will make
    (``(counts for the task, worst case)``: the main call, then any shadow)."""

    task_id: str
    team: str | None
    day: str
    attempt: int
    max_attempts: int
    max_tokens: int
    guard: Any  # policies.policy.GuardrailSpec
    targets: tuple[tuple[bool, WorstCase], ...]
    route: TaskRoute | None = None


@dataclass(frozen=True)
class Admitted:
    """The answer to an ``Admission``. ``route`` differs from the one proposed when the task
    already has one (nothing was checked or reserved: route again and admit with it);
    ``refusal`` is ``(code, message)`` when a cap refuses the call; otherwise ``tickets``
    name the reservations, one per target, and ``max_tokens`` is the clipped budget."""

    route: TaskRoute | None
    refusal: tuple[str, str] | None = None
    max_tokens: int = 0
    tickets: tuple[int, ...] = ()

    def conflicts(self, proposed: TaskRoute | None) -> bool:
        return proposed is not None and self.route != proposed

    def raise_refusal(self) -> None:
        if self.refusal is not None:
            raise GuardrailRefusal(*self.refusal)


@dataclass(frozen=True)
class SpendDelta:
    """What one settled call added: to its task (``task_id`` None: shadow) and team-day."""

    task_id: str | None
    team: str
    day: str
    tokens: int
    usd: float
    attempt: int


class GatewayState:
    """Budgets, routes and the response cache of one gateway (every method synchronous)."""

    def __init__(self, max_tasks: int = DEFAULT_MAX_TASKS, cache_entries: int = 10_000, *,
                 journal: bool = False):
        self.max_tasks = max_tasks
        self.ledger = BudgetLedger(max_tasks=max_tasks)
        self.routes: OrderedDict[str, TaskRoute] = OrderedDict()
        self.cache = ResponseCache(cache_entries)
        self._open: dict[int, Reservation] = {}
        # Tickets start at a random point of a 64-bit space: a call in flight when a crashed
        # ledger was replaced settles (or releases) nothing in the new one, instead of the
        # new ledger's reservation that happens to carry the same small number.
        self._tickets = itertools.count(secrets.randbits(63))
        self._journal = journal
        self.new_spend: list[SpendDelta] = []
        self.new_routes: dict[str, TaskRoute] = {}
        self._unwritten: tuple[list[Any], list[Any]] = ([], [])

    # ------------------------------------------------------------------ admission
    def admit(self, a: Admission) -> Admitted:
        route = None
        if a.route is not None:
            route = self.routes.get(a.task_id)
            if route is None:
                route = self._remember_route(a.task_id, a.route)
            else:
                self.routes.move_to_end(a.task_id)
                if route != a.route:
                    return Admitted(route)
        usage = self.ledger.task(a.task_id)
        refusal = check_call(a.guard, attempt=a.attempt, max_attempts=a.max_attempts,
                             usage=usage, team=a.team,
                             team_spent_usd=self.ledger.team_exposure(a.team, a.day))
        if refusal is not None:
            return Admitted(route, (refusal.code, refusal.message))
        max_tokens = clip_max_tokens(a.guard, usage, a.max_tokens)
        tickets = []
        for for_task, worst in a.targets:
            tokens, usd = worst.at(max_tokens)
            ticket = next(self._tickets)
            self._open[ticket] = self.ledger.reserve(a.task_id, a.team, a.day, tokens=tokens,
                                                     usd=usd, counts_for_task=for_task)
            tickets.append(ticket)
        return Admitted(route, None, max_tokens, tuple(tickets))

    def _remember_route(self, task_id: str, route: TaskRoute) -> TaskRoute:
        self.routes[task_id] = route
        while len(self.routes) > self.max_tasks:
            self.routes.popitem(last=False)
        if self._journal:
            self.new_routes.setdefault(task_id, route)
        return route

    def settle(self, ticket: int, *, tokens: int, usd: float, attempt: int,
               budget: Any = None,
               cache_put: tuple[CacheScope, str, dict[str, Any], float, float] | None = None,
               ) -> tuple[float, float] | None:
        """Record what the call spent in place of its reservation, keep its answer in the
        cache (``cache_put``: scope, prompt, value, now, ttl) and return ``(alert level,
        team spend)`` when the team's spend first reaches an alert level of ``budget``."""
        if cache_put is not None:
            self.cache.put(*cache_put)
        r = self._open.pop(ticket, None)
        if r is None:
            return None
        self.ledger.settle(r, tokens=tokens, usd=usd, attempt=attempt)
        if self._journal:
            self.new_spend.append(SpendDelta(r.task_id if r.usage is not None else None,
                                             r.team or "", r.day, tokens, usd, attempt))
        if budget is None or r.team is None:
            return None
        spent = self.ledger.team_spent(r.team, r.day)
        level = budget_alert_level(budget, spent)
        return (level, spent) if self.ledger.new_alert(r.team, r.day, level) else None

    def release(self, tickets: Iterable[int]) -> None:
        """Give back the reservations of calls that did not settle (failed or cancelled)."""
        for ticket in tickets:
            r = self._open.pop(ticket, None)
            if r is not None:
                self.ledger.release(r)

    # ---------------------------------------------------------------------- cache
    def cache_get(self, scope: CacheScope, prompt: str, now: float, *, mode: str,
                  threshold: float, max_entries: int) -> dict[str, Any] | None:
        if self.cache.max_entries != max_entries:
            self.cache.resize(max_entries)
        hit = self.cache.get(scope, prompt, now, mode=mode, threshold=threshold)
        return None if hit is None else hit[0].value

    def stats(self) -> dict[str, Any]:
        return {"cache": self.cache.stats(), "tasks": len(self.routes)}

    # ----------------------------------------------------------------- persistence
    def restore(self, spend: Iterable[Any], routes: Iterable[Any]) -> None:
        """Add recorded spend (``store.SpendRow``) and routes (``store.RouteRow``)."""
        from store import SCOPE_TASK

        for row in spend:
            if row.scope == SCOPE_TASK:
                usage = self.ledger.task(row.key)
                usage.tokens += row.tokens
                usage.usd += row.usd
                usage.calls += row.calls
                usage.last_attempt = max(usage.last_attempt, row.last_attempt)
            else:
                key = (row.key, row.day)
                self.ledger.team_day_usd[key] = self.ledger.team_day_usd.get(key, 0.0) + row.usd
        for r in routes:
            self.routes[r.task_id] = TaskRoute(r.policy_version, r.start, r.start_propensity,
                                               r.shadow_tier)

    def take_journal(self) -> tuple[list[Any], list[Any]]:
        """What was recorded since the last call, as store rows (spend summed per key)."""
        from store import SCOPE_TASK, SCOPE_TEAM, RouteRow, SpendRow

        spend, self.new_spend = self.new_spend, []
        routes, self.new_routes = self.new_routes, {}
        (unwritten_spend, unwritten_routes), self._unwritten = self._unwritten, ([], [])
        rows: dict[tuple[str, str, str], list[float]] = {}
        for d in spend:
            keys = [(SCOPE_TEAM, d.team, d.day, 0)]
            if d.task_id is not None:
                keys.append((SCOPE_TASK, d.task_id, "", 1))
            for scope, key, day, counts in keys:
                acc = rows.setdefault((scope, key, day), [0.0, 0, 0, 0])
                acc[0] += d.usd
                acc[1] += d.tokens * counts
                acc[2] += counts
                acc[3] = max(acc[3], d.attempt * counts)
        return (unwritten_spend + [SpendRow(s, k, day, usd, int(tokens), int(calls), int(last))
                                   for (s, k, day), (usd, tokens, calls, last) in rows.items()],
                unwritten_routes + [RouteRow(task_id, r.policy_version, r.start,
                                             r.start_propensity, r.shadow_tier)
                                    for task_id, r in routes.items()])

    def put_back(self, spend: list[Any], routes: list[Any]) -> None:
        """Rows a failed flush could not write: the next ``take_journal`` returns them."""
        self._unwritten = (spend + self._unwritten[0], routes + self._unwritten[1])


class LocalStateClient:
    """The gateway's state in its own process (each method completes without awaiting)."""

    shared = False

    def __init__(self, state: GatewayState):
        self.state = state

    def known_route(self, task_id: str) -> TaskRoute | None:
        return self.state.routes.get(task_id)

    async def admit(self, admission: Admission) -> Admitted:
        return self.state.admit(admission)

    async def settle(self, ticket: int, **kw: Any) -> tuple[float, float] | None:
        return self.state.settle(ticket, **kw)

    async def release(self, tickets: tuple[int, ...]) -> None:
        self.state.release(tickets)

    async def cache_get(self, *args: Any, **kw: Any) -> dict[str, Any] | None:
        return self.state.cache_get(*args, **kw)

    async def stats(self) -> dict[str, Any]:
        return self.state.stats()


class GatewayStateActor:
    """The Ray actor that owns one fleet's ``GatewayState`` and keeps it in the store."""

    def __init__(self, store_url: str, max_tasks: int = DEFAULT_MAX_TASKS,
                 cache_entries: int = 10_000, flush_interval_s: float = FLUSH_INTERVAL_S):
        from store import Store

        self.store = Store.open(store_url)
        self.state = GatewayState(max_tasks, cache_entries, journal=True)
        since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        self.state.restore(self.store.gateway_spend(since_day=since, max_tasks=max_tasks),
                           self.store.gateway_routes(max_tasks=max_tasks))
        # Calls run one at a time on the actor's thread; the flusher shares only the journal.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, args=(flush_interval_s,),
                                         name="ledger-flush", daemon=True)
        self._flusher.start()

    def admit(self, admission: Admission) -> Admitted:
        with self._lock:
            return self.state.admit(admission)

    def settle(self, ticket: int, **kw: Any) -> tuple[float, float] | None:
        with self._lock:
            return self.state.settle(ticket, **kw)

    def release(self, tickets: tuple[int, ...]) -> None:
        with self._lock:
            self.state.release(tickets)

    def cache_get(self, *args: Any, **kw: Any) -> dict[str, Any] | None:
        with self._lock:
            return self.state.cache_get(*args, **kw)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.state.stats()

    def team_spent(self, team: str, day: str) -> float:
        with self._lock:
            return self.state.ledger.team_spent(team, day)

    def flush(self) -> int:
        """Write what was recorded since the last flush to the store; the rows written."""
        with self._lock:
            spend, routes = self.state.take_journal()
        try:
            self.store.add_gateway_spend(spend, routes)
        except Exception:
            with self._lock:
                self.state.put_back(spend, routes)
            raise
        return len(spend) + len(routes)

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - kept for the next flush
                _log.warning("could not record the gateway's spend in the store: %s", exc)

    def __ray_terminate__(self) -> None:  # pragma: no cover - Ray's graceful exit
        self._stop.set()
        self.flush()


class ActorStateClient:
    """The state in a ``GatewayStateActor`` that every gateway replica shares."""

    shared = True

    def __init__(self, actor: Any, max_known_routes: int = DEFAULT_MAX_TASKS):
        self.actor = actor
        # Routes never change once recorded, so a replica may keep those it has seen.
        self._known: OrderedDict[str, TaskRoute] = OrderedDict()
        self._max_known = max_known_routes

    def known_route(self, task_id: str) -> TaskRoute | None:
        return self._known.get(task_id)

    async def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        try:
            return await getattr(self.actor, method).remote(*args, **kw)
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            raise SharedStateUnavailable(
                f"the gateway's shared ledger is unavailable ({type(exc).__name__}); "
                "retry shortly") from exc

    async def admit(self, admission: Admission) -> Admitted:
        admitted = await self._call("admit", admission)
        if admitted.route is not None and admission.route is not None:
            self._known[admission.task_id] = admitted.route
            while len(self._known) > self._max_known:
                self._known.popitem(last=False)
        return admitted

    async def settle(self, ticket: int, **kw: Any) -> tuple[float, float] | None:
        return await self._call("settle", ticket, **kw)

    async def release(self, tickets: tuple[int, ...]) -> None:
        await self._call("release", tickets)

    async def cache_get(self, *args: Any, **kw: Any) -> dict[str, Any] | None:
        return await self._call("cache_get", *args, **kw)

    async def stats(self) -> dict[str, Any]:
        return await self._call("stats")


def state_actor_name(store_url: str, fleet_name: str) -> str:
    """The product's name for one fleet's ledger actor: two fleets (or two stores) on one
    cluster never share one; a password in the URL is hashed, never shown."""
    digest = hashlib.sha256(f"{store_url}\n{fleet_name}".encode()).hexdigest()[:16]
    return f"gateway-state-{digest}"


def connect_shared_state(store_url: str, fleet_name: str, *,
                         max_tasks: int = DEFAULT_MAX_TASKS, cache_entries: int = 10_000,
                         flush_interval_s: float = FLUSH_INTERVAL_S) -> ActorStateClient:
    """The ledger actor of this (store, fleet), created by the first replica that asks."""
    import ray

    actor = ray.remote(GatewayStateActor).options(
        name=state_actor_name(store_url, fleet_name), namespace=STATE_NAMESPACE,
        lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1,
        max_task_retries=0,
    ).remote(store_url, max_tasks, cache_entries, flush_interval_s)
    return ActorStateClient(actor, max_tasks)


def stop_shared_state(store_url: str, fleet_name: str) -> bool:
    """Flush and end this (store, fleet)'s ledger actor, if it runs: the actor is detached
    (a redeployed gateway finds it again), so a fleet leaving a shared cluster ends it
    itself rather than leave its process behind. What it recorded is in the store; the next
    start rebuilds from there. Returns whether an actor was ended."""
    import ray

    try:
        actor = ray.get_actor(state_actor_name(store_url, fleet_name), namespace=STATE_NAMESPACE)
    except ValueError:
        return False
    try:
        ray.get(actor.flush.remote(), timeout=30)
    finally:
        ray.kill(actor, no_restart=True)
    return True

