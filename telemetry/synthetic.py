"""A seeded simulator of a day of agent work, for demos and tests before a fleet is running.

It applies a real policy through ``policies.routing`` (the same code the gateway uses) to
simulated tasks whose pass probability rises with tier rank and falls with difficulty, and
writes the spans of the telemetry contract as flat JSON lines. It is a stand-in for
``autopilot drive`` against the reference fleet, never a source of measured figures.

Attempt ``j`` of a task on a tier of rank ``r`` passes with probability
``sigmoid(skill * (r + 1) - difficulty - 1 + retry_bonus * (j - 1) + adapter - latent)``.
``latent`` is the task's own hidden difficulty (``N(0, latent_sd)``, drawn once per task,
0 by default): what the features do not say, shared by every tier and every attempt of the
task, so failures are correlated within a task as on real work (a task that failed on a
cheap tier is harder for the next one too). As the gateway does, a task whose draw falls
under ``routing.shadow_rate`` runs a shadow copy of its first attempt on another tier of
the order (``policies.routing.shadow_tier``): an attempt span with purpose ``shadow``,
attempt 1, the shadow's odds as its propensity (``shadow_probability``), its own calls and
its own verdict on the same task.

``coupled=True`` draws each part of a task from its own stream, keyed by the seed, the task's
number and the part (its features; its route; its shadow; its k-th try on tier ``t`` and
that try's cache rolls; its review). Two policies simulated with the same seed then see the
same tasks, and a task's k-th try on a tier draws the same numbers under both (its verdict
is the same draw against each try's own odds, so a first try on L and a retry on L after S
failed pass together as far as their odds allow): a difference between the two windows is
the policies', not the draws' (common random numbers). The default, one stream for the
whole window, is the same process drawn in another order, and keeps every window written
so far as it was.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.spans import (
    FEATURE_PREFIX,
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_TASK,
    Attr,
    CacheStatus,
    Outcome,
    Purpose,
)

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest
    from policies.policy import Policy

__all__ = ["WorkloadShape", "pass_probability", "simulate_spans", "write_spans"]


@dataclass(frozen=True)
class WorkloadShape:
    tasks: int = 2000
    families: Sequence[str] = ("expr_eval", "list_ops", "bracket_fix", "assert_value")
    teams: Sequence[str] = ("payments", "search", "platform")
    repos: Sequence[str] = ("api", "web", "infra", "sdk")
    day: str = "2026-11-20"
    seed: int = 7
    # Pass probability of one attempt (module docstring): sigmoid(skill * (rank + 1)
    # - difficulty - 1 + retry_bonus * (attempt - 1) + adapter - latent).
    skill: float = 1.6
    retry_bonus: float = 0.5
    latent_sd: float = 0.0  # per-task hidden difficulty: failures correlated within a task
    verifier_cost_usd: float = 0.002
    review_share: float = 0.3
    review_reject_rate: float = 0.05
    prefix_hit_rate: float = 0.4
    # Each part of a task from its own keyed stream (module docstring): common random
    # numbers across policies.
    coupled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def pass_probability(shape: WorkloadShape, rank: int, difficulty: float, attempt: int, *,
                     adapter: bool = False, latent: float = 0.0) -> float:
    """The simulator's own P(pass) of attempt ``attempt`` on a tier of rank position
    ``rank`` (0 = cheapest): the truth a test or benchmark can integrate over tasks."""
    return 1 / (1 + math.exp(-(shape.skill * (rank + 1) - difficulty - 1
                               + shape.retry_bonus * (attempt - 1)
                               + (1.0 if adapter else 0.0) - latent)))


def _hex(rng: random.Random, nbytes: int) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


@dataclass(frozen=True)
class _Draws:
    """Where one task's random numbers come from: the window's one stream, or (coupled) a
    stream per part of the task, keyed so that another policy's window draws the same."""

    window: random.Random
    seed: int
    task: int
    coupled: bool

    def stream(self, *part: object) -> random.Random:
        if not self.coupled:
            return self.window
        # A string seed is hashed by SHA-512: stable across runs and processes.
        return random.Random("/".join(map(str, (self.seed, self.task, *part))))


def simulate_spans(
    policy: Policy, fleet: FleetManifest, shape: WorkloadShape = WorkloadShape()
) -> Iterator[dict[str, Any]]:
    """Yield flat JSON-lines span dicts (task, attempts, calls) for ``shape.tasks`` tasks."""
    from policies.routing import (
        attempt_tiers,
        choose_start,
        resolve_routing,
        shadow_adapter,
        shadow_probability,
        shadow_tier,
        shadow_variant,
    )

    rng = random.Random(shape.seed)
    rank = {t.name: i for i, t in enumerate(fleet.tiers)}
    day_start = int(
        datetime.fromisoformat(shape.day).replace(tzinfo=UTC).timestamp() * 1e9
    )
    version = str(policy.metadata.version)
    for n in range(shape.tasks):
        draws = _Draws(rng, shape.seed, n, shape.coupled)
        drawn = draws.stream("task")
        family = drawn.choice(list(shape.families))
        difficulty = drawn.choice([1, 2, 3])
        size = drawn.randint(1, 12)
        features = {"difficulty": difficulty, "size": size}
        task_id = f"{shape.day}-t{n:06d}"
        trace_id = _hex(drawn, 16)
        task_span = _hex(drawn, 8)
        t0 = day_start + int(n * (86_400e9 / max(shape.tasks, 1)))
        routing = resolve_routing(policy, family)
        route = draws.stream("route")
        start, _ = choose_start(policy, family, features, route.random(), route.random())
        tiers = attempt_tiers(routing, start)
        probs = _attempt_probabilities(policy, family, features)
        # Draws only a shape or policy that uses them takes: other windows stay as they were.
        latent = drawn.gauss(0.0, shape.latent_sd) if shape.latent_sd > 0 else 0.0
        shadow = None
        if routing.shadow_rate > 0:
            shadowed = draws.stream("shadow")
            shadow = shadow_tier(policy, family, tiers[0], shadowed.random(), shadowed.random())

        task = _Task(policy, fleet, shape, rank, version, task_id, trace_id, task_span,
                     difficulty, size, latent, draws)
        clock = t0
        passed = False
        spans = task.spans
        tries: dict[str, int] = {}
        for j, tier in enumerate(tiers, start=1):
            tries[tier] = tries.get(tier, 0) + 1
            adapter = routing.adapter if tier == routing.adapter_tier else None
            a_start = clock
            passed, clock, calls = _attempt(task, tier, j, adapter, Purpose.SERVE,
                                            round(probs[j - 1].get(tier, 1.0), 6), a_start,
                                            try_on_tier=tries[tier])
            if j == 1 and shadow is not None:
                # Beside the first attempt, call for call (the gateway shadows each call of
                # attempt 1, with the family's shadow adapter only); evaluation spend, its
                # own verdict.
                odds = round(shadow_probability(routing, tiers[0], shadow), 6)
                _attempt(task, shadow, 1, shadow_adapter(routing, shadow),
                         Purpose.SHADOW, odds, a_start, calls,
                         variant=shadow_variant(policy, shadow))
            if passed:
                break
        review = draws.stream("review")
        reviewed = review.random() < shape.review_share
        accepted = (review.random() >= shape.review_reject_rate) if reviewed else None
        outcome = Outcome.GREEN if passed and accepted is not False else (
            Outcome.HUMAN_TRIAGE if passed else Outcome.FAILED)
        attrs = {
            Attr.TASK_ID: task_id,
            Attr.FAMILY: family,
            Attr.TEAM: review.choice(list(shape.teams)),
            Attr.REPO: review.choice(list(shape.repos)),
            Attr.AGENT: "sim-agent",
            Attr.OUTCOME: str(outcome),
            Attr.VERIFIER_PASSED: passed,
            Attr.REVIEW_ACCEPTED: accepted,
            Attr.VERIFIER_COST_USD: shape.verifier_cost_usd * len(spans),
            Attr.POLICY_VERSION: version,
        }
        attrs.update({FEATURE_PREFIX + k: v for k, v in features.items()})
        spans.append(_span(SPAN_TASK, trace_id, task_span, None, t0, clock, attrs))
        yield from spans


@dataclass
class _Task:
    """What every attempt of one simulated task shares."""

    policy: Any
    fleet: Any
    shape: WorkloadShape
    rank: dict[str, int]
    version: str
    task_id: str
    trace_id: str
    task_span: str
    difficulty: int
    size: int
    latent: float
    draws: _Draws
    spans: list[dict[str, Any]] = field(default_factory=list)


def _attempt(task: _Task, tier: str, j: int, adapter: str | None,
             purpose: Purpose, propensity: float | None, start: int,
             calls: int | None = None, variant: str | None = None,
             try_on_tier: int = 1) -> tuple[bool, int, int]:
    """Spans of one attempt (its calls, then the attempt) into ``task.spans``; its verdict,
    its end and its number of calls (drawn unless given). ``variant``: the policy's for the
    tier unless given (a shadow's own)."""
    policy, fleet, shape = task.policy, task.fleet, task.shape
    variant = variant or policy.spec.quantization.get(tier) or fleet.tier(tier).variant().name
    rng = task.draws.stream(purpose, tier, try_on_tier)
    # The cache rolls from their own stream (drawn only where the tier caches): caching a
    # tier or not leaves its tokens as drawn.
    prefix = bool(policy.spec.cache.prefix.get(tier))
    cache_rolls = task.draws.stream(purpose, tier, try_on_tier, "cache") if prefix else rng
    ok = rng.random() < pass_probability(shape, task.rank[tier], task.difficulty, j,
                                         adapter=adapter is not None, latent=task.latent)
    attempt_span = _hex(rng, 8)
    if calls is None:
        calls = rng.randint(1, 3)
    now = start
    for _ in range(calls):
        input_tokens = rng.randint(400, 1500) * (1 + task.size // 6)
        output_tokens = rng.randint(60, 400)
        cached = int(input_tokens * cache_rolls.uniform(0.3, 0.9)) if (
            prefix and cache_rolls.random() < shape.prefix_hit_rate
        ) else 0
        dur = int((0.05 + output_tokens / 200) * 1e9)
        call = {
            Attr.REQUEST_MODEL: fleet.tier(tier).model,
            Attr.INPUT_TOKENS: input_tokens,
            Attr.OUTPUT_TOKENS: output_tokens,
            Attr.TIER: tier,
            Attr.VARIANT: variant,
            Attr.ADAPTER: adapter,
            Attr.CACHE: str(CacheStatus.PREFIX if cached else CacheStatus.MISS),
            Attr.CACHED_INPUT_TOKENS: cached,
            Attr.TASK_ID: task.task_id,
            Attr.ATTEMPT: j,
            Attr.POLICY_VERSION: task.version,
        }
        if purpose is not Purpose.SERVE:
            call[Attr.PURPOSE] = str(purpose)
        task.spans.append(_span(SPAN_CALL, task.trace_id, _hex(rng, 8), attempt_span, now,
                                now + dur, call))
        now += dur
    task.spans.append(_span(SPAN_ATTEMPT, task.trace_id, attempt_span, task.task_span, start,
                            now, {
        Attr.TASK_ID: task.task_id,
        Attr.ATTEMPT: j,
        Attr.TIER: tier,
        Attr.VARIANT: variant,
        Attr.ADAPTER: adapter,
        Attr.PASSED: ok,
        Attr.PURPOSE: str(purpose),
        Attr.PROPENSITY: propensity,
        Attr.POLICY_VERSION: task.version,
    }))
    return ok, now, calls


def _attempt_probabilities(policy, family, features):
    from policies.routing import attempt_tier_probabilities

    return attempt_tier_probabilities(policy, family, features)


def _span(name, trace_id, span_id, parent, start, end, attrs) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_time_unix_nano": int(start),
        "end_time_unix_nano": int(end),
        "attributes": {k: v for k, v in attrs.items() if v is not None},
    }


def write_spans(spans: Iterator[dict[str, Any]], path: str | Path) -> int:
    """Write span dicts as flat JSON lines; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for span in spans:
            fh.write(json.dumps(span, separators=(",", ":")) + "\n")
            n += 1
    return n
