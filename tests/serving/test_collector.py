"""The distillation training set: opt-in collection, exclusions, gate-suite leaks refused."""

import asyncio
import json

import pytest

from contracts.manifest import load_fleet
from policies.policy import Policy
from serving.collector import (
    CollectorSpec,
    TrainingSetStore,
    VerifiedCollector,
    VerifiedExample,
    collection_decision,
    gate_prompt_hashes,
    load_training_set,
    prompt_hash,
    training_set_dir,
)
from serving.gateway_core import GatewayCore, PolicyBook
from serving.protocol import parse_request

FLEET = load_fleet("controlplane/starter/fleet.yaml")
ON = CollectorSpec(enabled=True, families=["list_ops", "expr_eval"])


def policy(exclude=()):
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M", "L"]},
                 "cache": {"response": {"exclude_families": list(exclude)}}}})


@pytest.fixture(scope="module")
def gate_hashes():
    from gates.suite import load_reference_suite

    return gate_prompt_hashes([load_reference_suite()])


@pytest.fixture(scope="module")
def gate_prompt():
    from gates.suite import load_reference_suite

    return load_reference_suite().cases[0]


def test_collection_is_off_by_default_and_opt_in_per_family():
    p = policy()
    assert collection_decision(CollectorSpec(), p, "list_ops", "serve") == (
        False, "collection is off")
    assert collection_decision(ON, p, "list_ops", "serve")[0]
    assert collection_decision(ON, p, "list_ops", "shadow")[0]
    assert not collection_decision(ON, p, "bracket_fix", "serve")[0]  # not opted in
    assert not collection_decision(ON, p, "list_ops", "gate")[0]  # gate traffic never
    assert not collection_decision(ON, p, None, "serve")[0]


def test_families_the_policy_or_settings_exclude_are_never_collected():
    ok, reason = collection_decision(ON, policy(exclude=["list_ops"]), "list_ops", "serve")
    assert not ok and "excluded" in reason
    spec = ON.model_copy(update={"exclude_families": ["expr_eval"]})
    assert not collection_decision(spec, policy(), "expr_eval", "serve")[0]


def test_gate_suite_prompts_are_refused_by_hash(tmp_path, gate_hashes, gate_prompt):
    store = TrainingSetStore(tmp_path, blocked=gate_hashes)
    leak = VerifiedExample.make(gate_prompt.family, gate_prompt.prompt, gate_prompt.expected)
    assert prompt_hash(gate_prompt.prompt) in gate_hashes
    stored, reason = store.add(leak)
    assert not stored and "gate-suite" in reason
    ok = VerifiedExample.make(gate_prompt.family, "not a gate prompt\n=", "1")
    assert store.add(ok) == (True, "collected")
    assert store.add(ok) == (False, "prompt already collected")
    # A line written around the store (or a suite that grew later) is dropped on read too.
    with store.path(gate_prompt.family).open("a") as fh:
        fh.write(json.dumps(leak.as_dict()) + "\n")
        fh.write(json.dumps({**ok.as_dict(), "prompt": "changed\n="}) + "\n")  # bad hash
        fh.write("{torn")
    kept = load_training_set(tmp_path, gate_prompt.family, blocked=gate_hashes)
    assert [e.prompt for e in kept] == ["not a gate prompt\n="]


def test_collector_stores_only_what_the_gateway_served_and_the_verifier_passed(tmp_path):
    c = VerifiedCollector(ON, TrainingSetStore(tmp_path))
    p = policy(exclude=["expr_eval"])
    kw = {"purpose": "serve", "tier": "L", "variant": "bf16", "adapter": None}
    assert c.remember(p, task_id="t1", attempt=1, family="list_ops", prompt="sort: [2,1]\n=",
                      text="[1,2]", **kw)
    assert c.remember(p, task_id="t2", attempt=1, family="list_ops", prompt="max: [5,1]\n=",
                      text="1", **kw)
    assert not c.remember(p, task_id="t3", attempt=1, family="expr_eval", prompt="eval: 1\n=",
                          text="1", **kw)
    assert c.report("t1", 1, True) == {"stored": True, "reason": "collected"}
    assert not c.report("t2", 1, False)["stored"]
    assert not c.report("t3", 1, True)["stored"]  # excluded: never held
    assert not c.report("t1", 1, True)["stored"]  # reported once
    rows = load_training_set(tmp_path, "list_ops", blocked=frozenset())
    assert [(e.prompt, e.output, e.tier) for e in rows] == [("sort: [2,1]\n=", "[1,2]", "L")]
    assert rows[0].output_sha256 and rows[0].prompt_sha256 == prompt_hash("sort: [2,1]\n=")
    assert not (tmp_path / "expr_eval.jsonl").exists()


class _Tiers:
    async def __call__(self, key, request):
        return {"text": "[1,2]", "input_tokens": 9, "output_tokens": 5,
                "cached_input_tokens": 0, "finish_reason": "stop"}


def _request(task_id, family, purpose="serve"):
    return parse_request({"prompt": "sort: [2,1]\n=", "max_tokens": 8, "stop": ["\n"],
                          "autopilot": {"task_id": task_id, "family": family,
                                        "purpose": purpose}}, "completion")


def test_gateway_core_keeps_its_own_record_until_the_verdict(tmp_path):
    p = policy(exclude=["expr_eval"])
    collector = VerifiedCollector.for_state(ON, tmp_path, blocked=frozenset())
    core = GatewayCore(FLEET, PolicyBook(p, {1: p}.__getitem__), _Tiers(), collector=collector)

    async def go():
        await core.complete(_request("a", "list_ops"))
        await core.complete(_request("b", "expr_eval"))
        await core.complete(_request("g", "list_ops", purpose="gate"))
        return [await core.report_verified(t, 1, True) for t in ("a", "b", "g")]

    results = asyncio.run(go())
    assert [r["stored"] for r in results] == [True, False, False]
    directory = training_set_dir(tmp_path)
    assert [e.output for e in load_training_set(directory, "list_ops", blocked=frozenset())] \
        == ["[1,2]"]
    assert not (directory / "expr_eval.jsonl").exists()
    off = GatewayCore(FLEET, PolicyBook(p, {1: p}.__getitem__), _Tiers())
    assert asyncio.run(off.report_verified("a", 1, True)) == {
        "stored": False, "reason": "collection is off"}


class _ReportingGateway:
    """Attempt 1 wrong, attempt 2 right; records every verdict the driver reports."""

    def __init__(self, answers):
        self.answers, self.reports = answers, []

    def complete(self, prompt, *, task, max_tokens=32, stop=("\n",)):
        from serving.client import Completion

        text = self.answers[prompt] if task.attempt == 2 else "wrong"
        return Completion(text=text, tier="S", variant="bf16", adapter=None, cache="miss",
                          policy_version=1, policy_hash="0" * 64, propensity=1.0,
                          input_tokens=10, output_tokens=3, cached_input_tokens=0,
                          latency_ms=1.0, cost_usd=0.0)

    def report_verified(self, task_id, attempt, passed):
        self.reports.append((task_id, attempt, passed))
        return {"stored": passed}


@pytest.mark.parametrize("report", [False, True])
def test_driver_reports_verdicts_only_when_asked(report):
    from opentelemetry.sdk.trace import TracerProvider

    from workload.driver import WorkloadSpec, drive, plan_workload

    spec = WorkloadSpec(tasks=4, seed=2, concurrency=1, report_verified=report)
    items = plan_workload(spec)
    gateway = _ReportingGateway({i.task.prompt: i.task.answer for i in items})
    drive(spec, gateway, tracer_provider=TracerProvider(), items=items)
    expected = [(i.work_id, k, k == 2) for i in items for k in (1, 2)] if report else []
    assert sorted(gateway.reports) == sorted(expected)
