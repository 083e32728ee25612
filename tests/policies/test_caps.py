"""The guardrail caps' rule, written once: a cap refuses once the spend has reached it."""

import numpy as np
import pytest

from contracts.guardrails import Cap
from policies.caps import (
    max_tokens_left,
    task_caps_reached,
    task_refusal,
    team_budget_reached,
)
from policies.policy import GuardrailSpec, TeamBudget

SPEC = GuardrailSpec(max_tokens_per_task=100, max_attempts_per_task=3, max_usd_per_task=0.01)


def refusal(attempt=1, usd=0.0, tokens=0, **kw):
    return task_refusal(SPEC, attempt=attempt, spent_usd=usd, spent_tokens=tokens, **kw)


def test_a_cap_refuses_once_reached_never_before():
    assert refusal(usd=0.0099, tokens=99, attempt=3) is None  # the next attempt may cross
    assert refusal(usd=0.01) is Cap.MAX_USD_PER_TASK
    assert refusal(tokens=100) is Cap.MAX_TOKENS_PER_TASK
    assert refusal(attempt=4) is Cap.MAX_ATTEMPTS_PER_TASK
    # The routing's resolved max_attempts, when given, replaces the guardrail's own.
    assert refusal(attempt=3, max_attempts=2) is Cap.MAX_ATTEMPTS_PER_TASK
    assert task_refusal(GuardrailSpec(), attempt=99, spent_usd=1e9, spent_tokens=10**12) is None


def test_caps_are_checked_in_the_gateways_order():
    assert refusal(attempt=4, usd=1.0, tokens=1000) is Cap.MAX_ATTEMPTS_PER_TASK
    assert refusal(usd=1.0, tokens=1000) is Cap.MAX_TOKENS_PER_TASK
    assert [c for c, _ in task_caps_reached(SPEC, attempt=1, spent_usd=0, spent_tokens=0)] == [
        Cap.MAX_ATTEMPTS_PER_TASK, Cap.MAX_TOKENS_PER_TASK, Cap.MAX_USD_PER_TASK]


def test_the_array_form_is_the_scalar_rule_elementwise():
    rng = np.random.default_rng(0)
    usd = rng.uniform(0, 0.02, 500)
    tokens = rng.integers(0, 200, 500)
    attempt = rng.integers(1, 6, 500)
    usd[:3], tokens[3:6] = 0.01, 100  # exactly at the caps
    hits = dict(task_caps_reached(SPEC, attempt=attempt, spent_usd=usd, spent_tokens=tokens))
    for i in range(500):
        expected = refusal(attempt=int(attempt[i]), usd=float(usd[i]), tokens=int(tokens[i]))
        first = next((c for c in hits if hits[c][i]), None)
        assert first is expected


def test_team_budget_and_token_clip():
    hard = TeamBudget(usd_per_day=1.0)
    assert not team_budget_reached(hard, 0.99) and team_budget_reached(hard, 1.0)
    assert not team_budget_reached(TeamBudget(usd_per_day=1.0, hard_stop=False), 5.0)
    assert not team_budget_reached(None, 5.0)
    assert team_budget_reached(hard, np.array([0.5, 1.0])).tolist() == [False, True]
    assert max_tokens_left(SPEC, 90, 32) == 10
    assert max_tokens_left(SPEC, 100, 32) == 1
    assert max_tokens_left(GuardrailSpec(), 10**9, 32) == 32


@pytest.mark.parametrize("usd", [0.0, 0.005, 0.01, 0.02])
def test_gateway_check_call_is_the_rule(usd):
    from serving.guardrails import TaskUsage, check_call

    refused = check_call(SPEC, attempt=1, max_attempts=3, usage=TaskUsage(usd=usd),
                         team=None, team_spent_usd=0.0)
    expected = refusal(usd=usd)
    assert (refused.code if refused else None) == (str(expected) if expected else None)
