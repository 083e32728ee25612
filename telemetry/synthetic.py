"""A seeded simulator of a day of agent work, for demos and tests before a fleet is running.

It applies a real policy through ``policies.routing`` (the same code the gateway uses) to
simulated tasks whose pass probability rises with tier rank and falls with difficulty, and
writes the spans of the telemetry contract as flat JSON lines. It is a stand-in for
``autopilot drive`` against the reference fleet, never a source of measured figures.
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

__all__ = ["WorkloadShape", "simulate_spans", "write_spans"]


@dataclass(frozen=True)
class WorkloadShape:
    tasks: int = 2000
    families: Sequence[str] = ("expr_eval", "list_ops", "bracket_fix", "assert_value")
    teams: Sequence[str] = ("payments", "search", "platform")
    repos: Sequence[str] = ("api", "web", "infra", "sdk")
    day: str = "2026-11-20"
    seed: int = 7
    # Pass probability of one attempt: sigmoid(skill * (rank + 1) - difficulty + 0.5 * retry).
    skill: float = 1.6
    verifier_cost_usd: float = 0.002
    review_share: float = 0.3
    review_reject_rate: float = 0.05
    prefix_hit_rate: float = 0.4
    extra: dict[str, Any] = field(default_factory=dict)


def _hex(rng: random.Random, nbytes: int) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def simulate_spans(
    policy: Policy, fleet: FleetManifest, shape: WorkloadShape = WorkloadShape()
) -> Iterator[dict[str, Any]]:
    """Yield flat JSON-lines span dicts (task, attempts, calls) for ``shape.tasks`` tasks."""
    from policies.routing import attempt_tiers, choose_start, resolve_routing

    rng = random.Random(shape.seed)
    rank = {t.name: i for i, t in enumerate(fleet.tiers)}
    day_start = int(
        datetime.fromisoformat(shape.day).replace(tzinfo=UTC).timestamp() * 1e9
    )
    version = str(policy.metadata.version)
    for n in range(shape.tasks):
        family = rng.choice(list(shape.families))
        difficulty = rng.choice([1, 2, 3])
        size = rng.randint(1, 12)
        features = {"difficulty": difficulty, "size": size}
        task_id = f"{shape.day}-t{n:06d}"
        trace_id = _hex(rng, 16)
        task_span = _hex(rng, 8)
        t0 = day_start + int(n * (86_400e9 / max(shape.tasks, 1)))
        routing = resolve_routing(policy, family)
        start, _ = choose_start(policy, family, features, rng.random(), rng.random())
        tiers = attempt_tiers(routing, start)
        probs = _attempt_probabilities(policy, family, features)
        clock = t0
        passed = False
        spans: list[dict[str, Any]] = []
        for j, tier in enumerate(tiers, start=1):
            variant = policy.spec.quantization.get(tier) or fleet.tier(tier).variant().name
            adapter = routing.adapter if tier == routing.adapter_tier else None
            p_pass = 1 / (1 + math.exp(-(shape.skill * (rank[tier] + 1) - difficulty - 1
                                         + 0.5 * (j - 1) + (1.0 if adapter else 0.0))))
            passed = rng.random() < p_pass
            attempt_span = _hex(rng, 8)
            calls = rng.randint(1, 3)
            a_start = clock
            for c in range(calls):
                input_tokens = rng.randint(400, 1500) * (1 + size // 6)
                output_tokens = rng.randint(60, 400)
                cached = int(input_tokens * rng.uniform(0.3, 0.9)) if (
                    policy.spec.cache.prefix.get(tier) and rng.random() < shape.prefix_hit_rate
                ) else 0
                dur = int((0.05 + output_tokens / 200) * 1e9)
                spans.append(_span(SPAN_CALL, trace_id, _hex(rng, 8), attempt_span, clock,
                                   clock + dur, {
                    Attr.REQUEST_MODEL: fleet.tier(tier).model,
                    Attr.INPUT_TOKENS: input_tokens,
                    Attr.OUTPUT_TOKENS: output_tokens,
                    Attr.TIER: tier,
                    Attr.VARIANT: variant,
                    Attr.ADAPTER: adapter,
                    Attr.CACHE: str(CacheStatus.PREFIX if cached else CacheStatus.MISS),
                    Attr.CACHED_INPUT_TOKENS: cached,
                    Attr.TASK_ID: task_id,
                    Attr.ATTEMPT: j,
                    Attr.POLICY_VERSION: version,
                }))
                clock += dur
            spans.append(_span(SPAN_ATTEMPT, trace_id, attempt_span, task_span, a_start, clock, {
                Attr.TASK_ID: task_id,
                Attr.ATTEMPT: j,
                Attr.TIER: tier,
                Attr.VARIANT: variant,
                Attr.ADAPTER: adapter,
                Attr.PASSED: passed,
                Attr.PURPOSE: str(Purpose.SERVE),
                Attr.PROPENSITY: round(probs[j - 1].get(tier, 1.0), 6),
                Attr.POLICY_VERSION: version,
            }))
            if passed:
                break
        reviewed = rng.random() < shape.review_share
        accepted = (rng.random() >= shape.review_reject_rate) if reviewed else None
        outcome = Outcome.GREEN if passed and accepted is not False else (
            Outcome.HUMAN_TRIAGE if passed else Outcome.FAILED)
        attrs = {
            Attr.TASK_ID: task_id,
            Attr.FAMILY: family,
            Attr.TEAM: rng.choice(list(shape.teams)),
            Attr.REPO: rng.choice(list(shape.repos)),
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
