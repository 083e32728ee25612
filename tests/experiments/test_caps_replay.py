"""Guardrail caps: the replay refuses what the gateway refuses, and charges what it charges.

Recorded tasks (tokens per attempt) go through the gateway itself (``GatewayCore`` with a
fake tier that answers with the recorded tokens, every attempt failing) and through the
replay's walk of the same tasks with P(pass) = 0. Both call ``policies.caps``; the test
holds the outcomes equal task by task: which tasks are refused, after how many attempts,
and what they spent.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from contracts.guardrails import Cap, GuardrailRefusal
from contracts.manifest import load_fleet
from contracts.tables import ATTEMPT_COLUMNS, CALL_COLUMNS, TASK_COLUMNS
from experiments.outcomes import OutcomeModels
from experiments.replay import ReplayContext, replay_policy
from experiments.window import build_window
from policies.policy import Policy
from serving.gateway_core import GatewayCore, PolicyBook
from serving.protocol import parse_request

FLEET = load_fleet("controlplane/starter/fleet.yaml")
N = 60


def _policy(**guardrails) -> Policy:
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M", "L"],
                             "max_attempts": 3},
                 "guardrails": guardrails}})


def _recorded():
    """Per task: input and output tokens of each of its attempts (one call per attempt)."""
    rng = np.random.default_rng(3)
    return {f"t{i:03d}": (int(rng.integers(300, 3000)), int(rng.integers(50, 900)))
            for i in range(N)}


def _frame(columns: dict[str, str], rows: dict[str, list]) -> pd.DataFrame:
    n = len(next(iter(rows.values())))
    out = {}
    for name, dtype in columns.items():
        values = rows.get(name, [None] * n)
        out[name] = pd.array(values, dtype=dtype if dtype != "float64" else "float64") \
            if name in rows else pd.array([None] * n, dtype=_nullable(dtype))
    return pd.DataFrame(out)


def _nullable(dtype: str) -> str:
    return {"int64": "Int64", "float64": "Float64"}.get(dtype, dtype)


def _window(recorded):
    """The recorded tasks as a telemetry window: one logged (failed) attempt each on S."""
    ids = list(recorded)
    inp = [recorded[t][0] for t in ids]
    out = [recorded[t][1] for t in ids]
    n = len(ids)
    tasks = _frame(TASK_COLUMNS, {
        "task_id": ids, "family": ["f"] * n, "outcome": ["failed"] * n,
        "verifier_passed": [False] * n, "verifier_cost_usd": [0.0] * n, "features": ["{}"] * n,
        "day": ["2026-01-01"] * n})
    attempts = _frame(ATTEMPT_COLUMNS, {
        "task_id": ids, "attempt": [1] * n, "tier": ["S"] * n, "variant": ["bf16"] * n,
        "passed": [False] * n, "purpose": ["serve"] * n, "propensity": [1.0] * n,
        "day": ["2026-01-01"] * n})
    calls = _frame(CALL_COLUMNS, {
        "task_id": ids, "attempt": [1] * n, "tier": ["S"] * n, "variant": ["bf16"] * n,
        "input_tokens": inp, "output_tokens": out, "cached_input_tokens": [0] * n,
        "cache": ["miss"] * n, "day": ["2026-01-01"] * n})
    return build_window(tasks, attempts, calls, FLEET)


class RecordedTiers:
    """Answers every call with the task's recorded tokens (the prompt is the task id),
    honouring the ``max_tokens`` the gateway asks for, as an engine does."""

    def __init__(self, recorded):
        self.recorded = recorded
        self.clipped: dict[str, float] = {}  # task -> $ the clip saved

    async def __call__(self, key, request):
        task = request["prompt"]
        inp, out = self.recorded[task]
        served = min(out, request["max_tokens"])
        if served < out:
            e = FLEET.economics(key.tier, key.variant)
            self.clipped[task] = self.clipped.get(task, 0.0) + (
                (out - served) * e.usd_per_output_token)
        return {"text": "no", "input_tokens": inp, "output_tokens": served,
                "cached_input_tokens": 0, "finish_reason": "stop"}


def _through_gateway(policy, recorded):
    """What the gateway does with each task when every attempt fails: attempts served,
    the refusal that stopped it (None: the plan ran out), the task's spend."""
    tiers = RecordedTiers(recorded)
    core = GatewayCore(FLEET, PolicyBook(policy, {1: policy}.__getitem__), tiers,
                       clock=lambda: 1_800_000_000.0)
    out = {}
    for task in recorded:
        served, refusal = 0, None
        for attempt in range(1, 4):
            body = {"prompt": task, "max_tokens": 4096,
                    "autopilot": {"task_id": task, "attempt": attempt, "family": "f"}}
            try:
                asyncio.run(core.complete(parse_request(body, "completion")))
            except GuardrailRefusal as refused:
                refusal = refused.code
                break
            served += 1
        out[task] = (served, refusal, core.ledger.task(task).usd)
    return out, tiers.clipped


def _never_passes(window) -> OutcomeModels:
    return OutcomeModels(None, 0, len(window.combos), len(window.tiers), 0.0, [], 0, None)


@pytest.mark.parametrize("guardrails", [
    {"max_usd_per_task": 0.0015},
    {"max_tokens_per_task": 4000},
    {"max_usd_per_task": 0.0015, "max_tokens_per_task": 4000},
], ids=["usd", "tokens", "both"])
def test_replay_refuses_and_charges_what_the_gateway_does(guardrails):
    recorded = _recorded()
    policy = _policy(**guardrails)
    gateway, clipped = _through_gateway(policy, recorded)
    window = _window(recorded)
    # Every attempt spends exactly its recorded tokens here (no spread between attempts):
    # the replay's cap odds are then the gateway's rule, task by task.
    window.attempt_cv, window.spend_scale = 0.0, None
    ctx = ReplayContext(window, _never_passes(window), min_support=0)
    values = replay_policy(policy, ctx, doubly_robust=False)

    refusals = [gateway[t][1] for t in window.task_ids]
    assert {Cap.MAX_TOKENS_PER_TASK, Cap.MAX_USD_PER_TASK} & set(refusals)
    assert None in refusals  # some tasks run the whole plan: the caps bind on some only
    served = np.array([gateway[t][0] for t in window.task_ids])
    budget = np.array([r in (Cap.MAX_TOKENS_PER_TASK, Cap.MAX_USD_PER_TASK) for r in refusals])
    assert values.attempts == pytest.approx(served)
    assert values.budget_exceeded == pytest.approx(budget.astype(float))
    # Spend: the gateway's ledger, plus what its max_tokens clip saved on the one attempt
    # that crossed the token cap (the replay charges whole attempts).
    spend = np.array([gateway[t][2] + clipped.get(t, 0.0) for t in window.task_ids])
    assert values.serve + values.rework == pytest.approx(spend, rel=1e-9)
    if "max_tokens_per_task" not in guardrails:
        assert not clipped
