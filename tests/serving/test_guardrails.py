import pandas as pd
import pytest

from contracts.manifest import load_fleet
from economics.costmodel import price_calls
from policies.policy import GuardrailSpec
from serving.guardrails import (
    BudgetLedger,
    TaskUsage,
    budget_alert_level,
    call_cost_usd,
    check_call,
    clip_max_tokens,
)

FLEET = load_fleet("controlplane/starter/fleet.yaml")
SPEC = GuardrailSpec(max_tokens_per_task=100, max_attempts_per_task=3, max_usd_per_task=0.01,
                     team_budgets={"payments": {"usd_per_day": 1.0}})


def check(usage=None, attempt=1, max_attempts=3, team="payments", spent=0.0, spec=SPEC):
    return check_call(spec, attempt=attempt, max_attempts=max_attempts,
                      usage=usage or TaskUsage(), team=team, team_spent_usd=spent)


def test_allows_within_every_cap():
    assert check() is None
    assert check(TaskUsage(tokens=99, usd=0.0099), attempt=3, spent=0.99) is None


def test_each_cap_refuses_with_its_code_and_numbers():
    r = check(attempt=4)
    assert r.code == "max_attempts_per_task" and "attempt 4" in r.message and "3" in r.message
    r = check(TaskUsage(tokens=100))
    assert r.code == "max_tokens_per_task" and "100" in r.message
    r = check(TaskUsage(usd=0.02))
    assert r.code == "max_usd_per_task" and "0.020000" in r.message and "0.010000" in r.message
    r = check(spent=1.0)
    assert r.code == "team_budget_exhausted" and "100.0%" in r.message and "payments" in r.message
    assert r.as_error()["error"]["type"] == "guardrail"


def test_soft_budget_and_unknown_team_never_refuse():
    soft = GuardrailSpec(team_budgets={"payments": {"usd_per_day": 1.0, "hard_stop": False}})
    assert check(spent=5.0, spec=soft) is None
    assert check(team="other", spent=5.0) is None


def test_clip_max_tokens_to_the_remaining_budget():
    assert clip_max_tokens(SPEC, TaskUsage(tokens=90), 32) == 10
    assert clip_max_tokens(SPEC, TaskUsage(tokens=0), 32) == 32
    assert clip_max_tokens(GuardrailSpec(), TaskUsage(tokens=10**9), 32) == 32


def test_alert_levels_fire_once_per_team_day_and_level():
    budget = SPEC.team_budgets["payments"]
    assert budget_alert_level(budget, 0.69) is None
    assert budget_alert_level(budget, 0.7) == 0.7
    assert budget_alert_level(budget, 0.95) == 0.9
    assert budget_alert_level(budget, 1.2) == 1.0
    ledger = BudgetLedger()
    assert ledger.new_alert("payments", "2026-01-01", 0.7)
    assert not ledger.new_alert("payments", "2026-01-01", 0.7)
    assert ledger.new_alert("payments", "2026-01-02", 0.7)


def test_ledger_counts_shadow_for_the_team_not_the_task():
    ledger = BudgetLedger(max_tasks=2)
    ledger.record("t1", "payments", "d", tokens=10, usd=0.5, attempt=1)
    ledger.record("t1", "payments", "d", tokens=10, usd=0.25, attempt=1, counts_for_task=False)
    assert ledger.task("t1").tokens == 10 and ledger.task("t1").usd == 0.5
    assert ledger.team_spent("payments", "d") == pytest.approx(0.75)
    ledger.task("t2"), ledger.task("t3")
    assert "t1" not in ledger.tasks  # bounded


@pytest.mark.parametrize("cache", ["miss", "prefix", "response"])
def test_call_cost_agrees_with_the_cost_model(cache):
    calls = pd.DataFrame({"tier": ["M"], "variant": ["bf16"], "input_tokens": [120],
                          "cached_input_tokens": [64 if cache != "miss" else 0],
                          "output_tokens": [30], "cache": [cache],
                          "cost_usd": pd.array([None], dtype="Float64")})
    expected = price_calls(calls, FLEET).cost_usd[0]
    got = call_cost_usd(FLEET, "M", "bf16", input_tokens=120,
                        cached_input_tokens=64 if cache != "miss" else 0, output_tokens=30,
                        cache=cache)
    assert got == pytest.approx(expected, rel=1e-12)
