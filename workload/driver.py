"""The workload driver: an agent harness that plays a day of tasks against the gateway.

Each work item is a reference task (``workload.tasks``) assigned to a team and a
repo. The harness tries it through the gateway, verifies the output with the task's
deterministic verifier, and tries again (the gateway escalates per the active policy) until
the verifier passes, the gateway refuses (a guardrail), or the harness's own attempt cap is
reached. It emits the ``agent.task`` and ``agent.attempt`` spans of the telemetry contract;
the gateway emits the ``llm.call`` spans under them (W3C ``traceparent``).

Time can be compressed: ``WorkloadSpec.day`` puts every span of the run on that UTC day
(the run's real elapsed time after midnight), and the gateway shifts its call spans by the
same offset, so a "day" of telemetry takes minutes and lands in that day's partition.

Pure parts (``plan_workload``, ``task_outcome``) are separate from the adapter (``drive``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from contracts.documents import Strict
from contracts.guardrails import Cap
from contracts.spans import (
    FEATURE_PREFIX,
    SPAN_ATTEMPT,
    SPAN_TASK,
    Attr,
    Outcome,
    Purpose,
)

if TYPE_CHECKING:  # pragma: no cover
    from workload.tasks import Task

__all__ = [
    "AttemptRecord",
    "DriveReport",
    "WorkItem",
    "WorkloadSpec",
    "day_offset_ns",
    "drive",
    "plan_workload",
    "task_outcome",
]

AGENT_NAME = "reference-harness"
# Guardrail codes (serving/guardrails.py) that mean "send this task to a person" rather than
# "the money ran out": the attempt cap is the policy's escalation ending.
_TRIAGE_CODES = frozenset({Cap.MAX_ATTEMPTS_PER_TASK.value})


class WorkloadSpec(Strict):
    """What a day of work looks like. Written by people (demo, tests, ``autopilot drive``)."""

    tasks: int = Field(default=200, ge=1)
    seed: int = 11
    day: str = Field(default="2026-11-20", description="UTC day the spans are stamped with")
    families: dict[str, float] = Field(
        default_factory=dict, description="family -> weight; empty: every family equally"
    )
    difficulties: dict[int, float] = Field(
        default_factory=dict, description="difficulty -> weight; empty: 1, 2, 3 equally"
    )
    teams: dict[str, float] = Field(default_factory=lambda: {"payments": 0.5, "search": 0.3,
                                                             "platform": 0.2})
    repos: dict[str, list[str]] = Field(
        default_factory=lambda: {"payments": ["billing-api", "ledger"],
                                 "search": ["indexer", "query-svc"],
                                 "platform": ["infra"]},
        description="team -> its repos",
    )
    arrival_rate_per_s: float | None = Field(
        default=None, gt=0, description="Poisson arrivals; None: as fast as concurrency allows"
    )
    concurrency: int = Field(default=8, ge=1, le=256)
    max_attempts: int = Field(default=10, ge=1, description="the harness's own cap per task")
    max_tokens: int = Field(default=32, ge=1)
    verifier_cost_usd: float = Field(
        default=0.0005, ge=0, description="CI compute per verification (a stand-in figure)"
    )
    split: str = Field(default="heldout", pattern="^(heldout|train|any)$",
                       description="which split of the task generator the work comes from")
    report_verified: bool = Field(
        default=False, description="tell the gateway each serve attempt's verdict "
        "(POST /autopilot/verified: the distillation training set; off by default)")

    @field_validator("day")
    @classmethod
    def _iso_day(cls, v: str) -> str:
        datetime.strptime(v, "%Y-%m-%d")
        return v


@dataclass(frozen=True)
class WorkItem:
    """One task to do: a reference task, who asked for it, and a run-unique id."""

    work_id: str
    task: Task
    team: str
    repo: str
    arrival_s: float  # seconds after the run starts


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    tier: str
    variant: str | None
    adapter: str | None
    passed: bool
    purpose: str
    propensity: float | None
    reason: str


@dataclass
class DriveReport:
    tasks: int = 0
    outcomes: Counter = field(default_factory=Counter)
    attempts: int = 0
    shadow_attempts: int = 0
    first_pass: int = 0
    tiers: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    policy_versions: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        green = self.outcomes.get(str(Outcome.GREEN), 0)
        return {
            "tasks": self.tasks,
            "green": green,
            "green_rate": green / self.tasks if self.tasks else None,
            "fpy": self.first_pass / self.tasks if self.tasks else None,
            "attempts": self.attempts,
            "shadow_attempts": self.shadow_attempts,
            "outcomes": dict(self.outcomes),
            "tiers": dict(self.tiers),
            "refusals": dict(self.refusals),
            "errors": dict(self.errors),
            "policy_versions": dict(self.policy_versions),
            "seconds": round(self.seconds, 2),
        }


# ------------------------------------------------------------------------- pure parts
def _weighted(rng: random.Random, weights: Mapping[Any, float]) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys], k=1)[0]


def plan_workload(spec: WorkloadSpec) -> list[WorkItem]:
    """The run's work items, a deterministic function of ``spec``."""
    from workload.tasks import DIFFICULTIES, FAMILIES, generate_tasks

    families = spec.families or {f: 1.0 for f in FAMILIES}
    difficulties = spec.difficulties or {d: 1.0 for d in DIFFICULTIES}
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"families: unknown {unknown} (known: {list(FAMILIES)})")
    missing_repos = sorted(t for t in spec.teams if not spec.repos.get(t))
    if missing_repos:
        raise ValueError(f"repos: teams {missing_repos} have no repo")
    mix = {(f, d): families[f] * difficulties[d] for f in families for d in difficulties}
    tasks = generate_tasks(spec.tasks, seed=spec.seed, mix=mix,
                           split=None if spec.split == "any" else spec.split)
    rng = random.Random(f"{spec.seed}:assign")
    clock = 0.0
    items = []
    for n, task in enumerate(tasks):
        if spec.arrival_rate_per_s is not None:
            clock += rng.expovariate(spec.arrival_rate_per_s)
        team = _weighted(rng, spec.teams)
        repo = rng.choice(spec.repos[team])
        items.append(WorkItem(f"{spec.day}-{spec.seed}-{n:06d}-{task.task_id[:8]}", task, team,
                              repo, clock))
    return items


def task_outcome(attempts: Sequence[AttemptRecord], refusal_code: str | None,
                 hit_harness_cap: bool) -> Outcome:
    """How a task ended, from its serve attempts and why it stopped.

    green: a serve attempt passed. budget_exceeded: a token, cost or team-budget guardrail
    refused it. human_triage: the policy's attempts ran out (the gateway's attempt cap) or
    the harness's own cap did. failed: it stopped on an error before either.
    """
    if any(a.passed for a in attempts if a.purpose == str(Purpose.SERVE)):
        return Outcome.GREEN
    if refusal_code is not None:
        return Outcome.HUMAN_TRIAGE if refusal_code in _TRIAGE_CODES else Outcome.BUDGET_EXCEEDED
    if hit_harness_cap:
        return Outcome.HUMAN_TRIAGE
    return Outcome.FAILED


def day_offset_ns(day: str, real_start_ns: int) -> int:
    """What to add to real time so the run starts at midnight UTC of ``day``."""
    midnight = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int(midnight.timestamp() * 1e9) - real_start_ns


# ---------------------------------------------------------------------------- adapter
def drive(spec: WorkloadSpec, client: Any, *, tracer_provider: Any = None,
          progress: Callable[[int, int], None] | None = None,
          items: Iterable[WorkItem] | None = None) -> DriveReport:
    """Play the workload against a gateway ``client`` (``serving.client.GatewayClient``).

    Spans go to ``tracer_provider`` (default: the global one set by
    ``telemetry.otel.configure_tracing``). Returns counts for people; the
    telemetry is the record.
    """
    from opentelemetry import trace

    work = list(items) if items is not None else plan_workload(spec)
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = provider.get_tracer("fleet-autopilot.driver")
    report = DriveReport()
    lock = threading.Lock()
    real_start = time.time_ns()
    offset = day_offset_ns(spec.day, real_start)
    done = 0

    def run(item: WorkItem) -> None:
        nonlocal done
        wait = item.arrival_s - (time.time_ns() - real_start) / 1e9
        if wait > 0:
            time.sleep(wait)
        result = _run_task(item, spec, client, tracer, offset)
        with lock:
            _tally(report, result)
            done += 1
            if progress is not None:
                progress(done, len(work))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="drive") as pool:
        for future in [pool.submit(run, item) for item in work]:
            future.result()
    report.seconds = time.perf_counter() - t0
    if hasattr(provider, "force_flush"):
        provider.force_flush()
    return report


@dataclass
class _TaskResult:
    outcome: Outcome
    attempts: list[AttemptRecord]
    refusal: str | None
    error: str | None
    policy_version: str | None


def _now(offset: int) -> int:
    return time.time_ns() + offset


def _run_task(item: WorkItem, spec: WorkloadSpec, client: Any, tracer: Any,
              offset: int) -> _TaskResult:
    from opentelemetry import propagate, trace

    from contracts.errors import TransientError
    from contracts.guardrails import GuardrailRefusal
    from serving.client import TaskContext
    from workload.tasks import verify

    task = item.task
    attempts: list[AttemptRecord] = []
    refusal: str | None = None
    error: str | None = None
    policy_version: str | None = None
    verifications = 0
    task_span = tracer.start_span(SPAN_TASK, start_time=_now(offset))
    task_ctx = trace.set_span_in_context(task_span)
    attempt_no = 0
    passed = False
    while attempt_no < spec.max_attempts and not passed:
        attempt_no += 1
        span = tracer.start_span(SPAN_ATTEMPT, context=task_ctx, start_time=_now(offset))
        shadow_span = tracer.start_span(SPAN_ATTEMPT, context=task_ctx, start_time=_now(offset))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        shadow_carrier: dict[str, str] = {}
        propagate.inject(shadow_carrier, context=trace.set_span_in_context(shadow_span))
        ctx = TaskContext(
            task_id=item.work_id, attempt=attempt_no, family=task.family, team=item.team,
            repo=item.repo, features=dict(task.features), purpose=str(Purpose.SERVE),
            traceparent=carrier.get("traceparent"),
            shadow_traceparent=shadow_carrier.get("traceparent"), clock_offset_ns=offset,
        )
        try:
            completion = client.complete(task.prompt, task=ctx, max_tokens=spec.max_tokens)
        except GuardrailRefusal as refused:
            refusal = refused.code
            _discard(span)
            _discard(shadow_span)
            break
        except TransientError as exc:
            error = f"{type(exc).__name__}: {exc}"
            _discard(span)
            _discard(shadow_span)
            break
        verdict = verify(task, completion.text)
        verifications += 1
        passed = verdict.passed
        if spec.report_verified:
            _report_verified(client, item.work_id, attempt_no, passed)
        policy_version = str(completion.policy_version)
        record = AttemptRecord(attempt_no, completion.tier, completion.variant,
                               completion.adapter, passed, str(Purpose.SERVE),
                               completion.propensity, verdict.reason)
        attempts.append(record)
        _end_attempt(span, item, record, policy_version, offset)
        if completion.shadow is not None:
            shadow = completion.shadow
            shadow_verdict = verify(task, shadow.text)
            verifications += 1
            shadow_record = AttemptRecord(attempt_no, shadow.tier, shadow.variant,
                                          shadow.adapter, shadow_verdict.passed,
                                          str(Purpose.SHADOW), shadow.propensity,
                                          shadow_verdict.reason)
            attempts.append(shadow_record)
            _end_attempt(shadow_span, item, shadow_record, policy_version, offset)
        else:
            _discard(shadow_span)
    hit_cap = not passed and refusal is None and error is None
    outcome = task_outcome(attempts, refusal, hit_cap)
    attrs = {
        Attr.TASK_ID: item.work_id,
        Attr.FAMILY: task.family,
        Attr.TEAM: item.team,
        Attr.REPO: item.repo,
        Attr.AGENT: AGENT_NAME,
        Attr.OUTCOME: str(outcome),
        Attr.VERIFIER_PASSED: outcome == Outcome.GREEN,
        Attr.VERIFIER_COST_USD: spec.verifier_cost_usd * verifications,
        Attr.POLICY_VERSION: policy_version,
    }
    attrs.update({FEATURE_PREFIX + k: v for k, v in task.features.items()})
    _set(task_span, attrs)
    task_span.end(end_time=_now(offset))
    return _TaskResult(outcome, attempts, refusal, error, policy_version)


def _end_attempt(span: Any, item: WorkItem, record: AttemptRecord, policy_version: str | None,
                 offset: int) -> None:
    _set(span, {
        Attr.TASK_ID: item.work_id,
        Attr.ATTEMPT: record.attempt,
        Attr.TIER: record.tier,
        Attr.VARIANT: record.variant,
        Attr.ADAPTER: record.adapter,
        Attr.PASSED: record.passed,
        Attr.PURPOSE: record.purpose,
        Attr.PROPENSITY: record.propensity,
        Attr.POLICY_VERSION: policy_version,
    })
    span.end(end_time=_now(offset))


def _report_verified(client: Any, task_id: str, attempt: int, passed: bool) -> None:
    """Best effort: a lost verdict only means one example fewer for distillation."""
    from contracts.errors import AutopilotError

    try:
        client.report_verified(task_id, attempt, passed)
    except AutopilotError:
        pass


def _discard(span: Any) -> None:
    """Drop a span that stood ready for an attempt that never happened.

    A span that is never ended is never exported; nothing else refers to it.
    """


def _set(span: Any, attributes: Mapping[str, Any]) -> None:
    from telemetry.otel import set_span_attributes

    set_span_attributes(span, attributes)


def _tally(report: DriveReport, result: _TaskResult) -> None:
    report.tasks += 1
    report.outcomes[str(result.outcome)] += 1
    serve = [a for a in result.attempts if a.purpose == str(Purpose.SERVE)]
    report.attempts += len(serve)
    report.shadow_attempts += len(result.attempts) - len(serve)
    if serve and serve[0].passed:
        report.first_pass += 1
    for a in serve:
        report.tiers[a.tier] += 1
    if result.refusal:
        report.refusals[result.refusal] += 1
    if result.error:
        report.errors[result.error.split(":")[0]] += 1
    if result.policy_version:
        report.policy_versions[result.policy_version] += 1
