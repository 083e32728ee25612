"""The workload driver against a scripted gateway: plans, outcomes and the spans it emits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import serving.client as client_mod
from contracts.guardrails import GuardrailRefusal
from contracts.spans import SPAN_ATTEMPT, SPAN_TASK, Attr, Outcome, Purpose
from workload.driver import (
    AttemptRecord,
    WorkloadSpec,
    day_offset_ns,
    drive,
    plan_workload,
    task_outcome,
)


def test_plan_is_deterministic_and_follows_the_mix():
    spec = WorkloadSpec(tasks=60, seed=3, families={"expr_eval": 1.0}, difficulties={1: 1.0})
    a, b = plan_workload(spec), plan_workload(spec)
    assert [i.work_id for i in a] == [i.work_id for i in b]
    assert len({i.work_id for i in a}) == 60
    assert {i.task.family for i in a} == {"expr_eval"}
    assert {i.task.difficulty for i in a} == {1}
    assert {i.team for i in a} <= set(spec.teams)
    assert all(i.repo in spec.repos[i.team] for i in a)


def test_plan_refuses_unknown_family_naming_it():
    with pytest.raises(ValueError, match="nosuch"):
        plan_workload(WorkloadSpec(tasks=2, families={"nosuch": 1.0}))


def test_arrivals_are_increasing_when_a_rate_is_set():
    items = plan_workload(WorkloadSpec(tasks=20, arrival_rate_per_s=50.0))
    arrivals = [i.arrival_s for i in items]
    assert arrivals == sorted(arrivals) and arrivals[-1] > 0


def _rec(passed: bool, purpose: str = "serve") -> AttemptRecord:
    return AttemptRecord(1, "S", "bf16", None, passed, purpose, 1.0, "")


@pytest.mark.parametrize(
    ("attempts", "refusal", "cap", "expected"),
    [
        ([_rec(False), _rec(True)], None, False, Outcome.GREEN),
        ([_rec(False)], "max_attempts_per_task", False, Outcome.HUMAN_TRIAGE),
        ([_rec(False)], "team_budget_exhausted", False, Outcome.BUDGET_EXCEEDED),
        ([_rec(False)], "max_tokens_per_task", False, Outcome.BUDGET_EXCEEDED),
        ([_rec(False)] * 3, None, True, Outcome.HUMAN_TRIAGE),
        ([], None, False, Outcome.FAILED),
        ([_rec(False), _rec(True, "shadow")], None, False, Outcome.FAILED),
    ],
)
def test_task_outcome(attempts, refusal, cap, expected):
    assert task_outcome(attempts, refusal, cap) == expected


def test_day_offset_puts_the_run_at_midnight():
    real = 1_700_000_000_000_000_000
    offset = day_offset_ns("2026-11-20", real)
    assert real + offset == 1_795_132_800_000_000_000  # 2026-11-20T00:00:00Z


@dataclass
class ScriptedGateway:
    """Attempt 1 on S (right only on difficulty 1), attempt 2 on L (always right), then the
    attempt cap; a shadow copy on M for every first attempt."""

    def complete(self, prompt, *, task, max_tokens=32, stop=("\n",)):
        if task.attempt > 2:
            raise GuardrailRefusal("max_attempts_per_task", "attempt 3 > cap 2")
        item = self.answers[prompt]
        tier = "S" if task.attempt == 1 else "L"
        right = tier == "L" or item.difficulty == 1
        text = item.answer if right else "wrong"
        shadow = None
        if task.attempt == 1:
            shadow = self._completion(item.answer, "M", None)
        return self._completion(text, tier, shadow)

    def _completion(self, text, tier, shadow):
        return client_mod.Completion(
            text=text, tier=tier, variant="bf16", adapter=None, cache="miss", policy_version=1,
            policy_hash="0" * 64, propensity=1.0, input_tokens=10, output_tokens=3,
            cached_input_tokens=0, latency_ms=1.0, cost_usd=0.0, shadow=shadow)

    answers: dict


def test_drive_emits_contract_spans(tmp_path):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from telemetry.ingest import ingest_paths
    from telemetry.otel import JsonLinesSpanExporter
    from telemetry.warehouse import read_table

    spec = WorkloadSpec(tasks=30, seed=5, concurrency=4, day="2026-11-20")
    items = plan_workload(spec)
    gateway = ScriptedGateway(answers={i.task.prompt: i.task for i in items})
    spans_file = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(spans_file)))
    report = drive(spec, gateway, tracer_provider=provider, items=items)
    provider.shutdown()

    assert report.tasks == 30 and report.outcomes == {"green": 30}
    easy = sum(1 for i in items if i.task.difficulty == 1)
    assert report.first_pass == easy
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    tasks = [s for s in spans if s["name"] == SPAN_TASK]
    attempts = [s for s in spans if s["name"] == SPAN_ATTEMPT]
    assert len(tasks) == 30
    assert sum(a["attributes"][Attr.PURPOSE] == str(Purpose.SHADOW) for a in attempts) == 30
    by_id = {t["span_id"]: t for t in tasks}
    assert all(a["parent_span_id"] in by_id for a in attempts)

    report_ingest = ingest_paths([spans_file], tmp_path / "telemetry")
    assert report_ingest.as_dict()["quarantined"] == {}
    stored = read_table(tmp_path / "telemetry", "tasks")
    assert set(stored["day"]) == {"2026-11-20"}
    assert (stored["outcome"] == "green").all()
