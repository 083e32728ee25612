"""The FinOps register FIN-01..FIN-09 and team budget alert levels."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from pydantic import ValidationError

from contracts.manifest import FleetManifest
from contracts.tables import TABLES
from economics.finops import (
    BudgetStatus,
    FinOpsTargets,
    RegisterEntry,
    Status,
    budget_status,
    finops_register,
    register_from_frames,
)
from policies.policy import TeamBudget

HEALTHY: dict[str, Any] = {
    "tasks": 100,
    "cost_per_green_pr": 0.08,
    "fpy": 0.75,
    "gpu_utilisation": 0.80,
    "idle_share": 0.05,
    "cache_hit_rate": 0.60,
    "tier_L_share": 0.05,
    "eval_share": 0.20,
    "spot_share": 0.30,
    "runaway_loops": 0,
}


def register(targets: FinOpsTargets | None = None, **changes: Any) -> dict[str, RegisterEntry]:
    return {e.id: e for e in finops_register({**HEALTHY, **changes}, targets)}


# ----------------------------------------------------------------------------- targets
def test_targets_default_to_the_practice_and_are_frozen_and_strict():
    t = FinOpsTargets()
    assert (t.cost_per_green_pr_usd, t.fpy_min, t.gpu_utilisation_min, t.idle_share_max,
            t.cache_hit_rate_min, t.tier_l_share_max, t.eval_share_max, t.spot_share_min,
            t.runaway_loops_max) == (None, 0.70, 0.70, 0.10, 0.50, 0.10, 0.40, 0.0, 0)
    with pytest.raises(ValidationError):
        t.fpy_min = 0.5
    with pytest.raises(ValidationError, match="extra"):
        FinOpsTargets.model_validate({"fpy_minimum": 0.5})
    with pytest.raises(ValidationError):
        FinOpsTargets(fpy_min=1.5)
    assert FinOpsTargets.model_validate({"fpy_min": 0.8}).fpy_min == 0.8


def test_healthy_row_is_all_ok_and_ids_are_in_order():
    entries = finops_register(HEALTHY)
    assert [e.id for e in entries] == [f"FIN-0{i}" for i in range(1, 10)]
    assert all(e.status is Status.OK for e in entries)


# ----------------------------------------------------------------- each check OK / BREACH
CASES = [
    # id, metric column, ok value, breach value, message on breach
    ("FIN-02", "fpy", 0.70, 0.62, "FPY 0.62 < target 0.70"),
    ("FIN-03", "gpu_utilisation", 0.71, 0.55, "GPU utilisation 0.55 < target 0.70"),
    ("FIN-04", "idle_share", 0.10, 0.25, "idle share 0.25 > target 0.10"),
    ("FIN-05", "cache_hit_rate", 0.50, 0.31, "cache hit rate 0.31 < target 0.50"),
    ("FIN-06", "tier_L_share", 0.10, 0.18, "Tier-L share 0.18 > target 0.10"),
    ("FIN-07", "eval_share", 0.40, 0.46, "eval share 0.46 > target 0.40"),
    ("FIN-09", "runaway_loops", 0, 3, "runaway loops 3 > target 0"),
]


@pytest.mark.parametrize(("fin_id", "column", "ok", "bad", "message"), CASES)
def test_each_check_ok_and_breach(fin_id, column, ok, bad, message):
    entry = register(**{column: ok})[fin_id]
    assert entry.status is Status.OK and entry.value == pytest.approx(ok)
    breach = register(**{column: bad})[fin_id]
    assert breach.status is Status.BREACH
    assert breach.message == message
    assert breach.comparator in (">=", "<=")


def test_cost_per_green_pr_is_reported_without_a_target_and_judged_with_one():
    reported = register()["FIN-01"]
    assert reported.status is Status.OK and reported.target is None
    assert "$0.0800" in reported.message and "no target" in reported.message
    targets = FinOpsTargets(cost_per_green_pr_usd=0.10)
    assert register(targets)["FIN-01"].status is Status.OK
    breach = register(targets, cost_per_green_pr=0.1234)["FIN-01"]
    assert breach.status is Status.BREACH
    assert breach.message == "$/Green PR $0.1234 > target $0.1000"


def test_spot_share_is_informative_by_default_and_judged_with_a_target():
    entry = register(spot_share=0.0)["FIN-08"]
    assert entry.status is Status.OK and "informative" in entry.message
    breach = register(FinOpsTargets(spot_share_min=0.5), spot_share=0.3)["FIN-08"]
    assert breach.status is Status.BREACH and breach.message == "spot share 0.30 < target 0.50"


def test_missing_figures_are_no_data_with_the_reason():
    entries = register(cost_per_green_pr=float("nan"),
                       cost_per_green_pr_note="no Green PRs in the window (spend $3.0000)",
                       fpy=None, gpu_utilisation=pd.NA)
    assert entries["FIN-01"].status is Status.NO_DATA
    assert "spend $3.0000" in entries["FIN-01"].message
    assert entries["FIN-02"].status is Status.NO_DATA and entries["FIN-02"].value is None
    assert entries["FIN-03"].status is Status.NO_DATA
    assert register(tasks=0)["FIN-09"].status is Status.NO_DATA
    empty = {e.id: e for e in finops_register({})}
    assert all(e.status is Status.NO_DATA for e in empty.values())


def test_register_reads_a_one_row_frame_and_entries_serialise():
    entries = finops_register(pd.DataFrame([HEALTHY]))
    assert entries[1].as_dict()["status"] == "OK"
    assert set(entries[1].as_dict()) == {"id", "name", "value", "target", "comparator",
                                         "status", "message"}
    with pytest.raises(ValueError, match="one metrics row"):
        finops_register(pd.DataFrame([HEALTHY, HEALTHY]))


def test_register_from_telemetry_frames():
    fleet = FleetManifest.model_validate({"spec": {"tiers": [
        {"name": "S", "rank": 0, "model": "s", "variants": [{"name": "bf16", "weights": "w",
         "economics": {"gpus": 1, "usd_per_gpu_hour": 3.6, "prefill_tokens_per_s": 1000,
                       "decode_tokens_per_s": 1000}}]}]}})

    def frame(name: str, row: dict[str, Any]) -> pd.DataFrame:
        base = {c: None for c in TABLES[name]}
        base.update(day="2026-11-20", start_ns=0, end_ns=1, attempt=1, input_tokens=1000,
                    output_tokens=0, cached_input_tokens=0)
        return pd.DataFrame([{**base, **row}], columns=list(TABLES[name])).astype(TABLES[name])

    tasks = frame("tasks", {"task_id": "t", "outcome": "green", "verifier_passed": True})
    attempts = frame("attempts", {"task_id": "t", "tier": "S", "passed": False,
                                  "purpose": "serve"})
    calls = frame("calls", {"task_id": "t", "tier": "S", "cache": "miss"})
    entries = {e.id: e for e in register_from_frames(tasks, attempts, calls, fleet)}
    assert entries["FIN-01"].value == pytest.approx(0.001)
    assert entries["FIN-02"].status is Status.BREACH and entries["FIN-02"].value == 0.0
    assert entries["FIN-05"].status is Status.BREACH  # no cache hits
    assert entries["FIN-06"].status is Status.BREACH  # the only tier is the top tier


# ------------------------------------------------------------------------ team budgets
@pytest.mark.parametrize(("spent", "level"), [
    (69.0, "none"), (70.0, "70"), (89.99, "70"), (90.0, "90"), (100.0, "100"), (130.0, "100"),
])
def test_budget_alert_levels(spent, level):
    spend = pd.DataFrame({"team": ["pay"], "day": ["2026-11-20"], "spend_total": [spent]})
    [row] = budget_status(spend, {"pay": TeamBudget(usd_per_day=100)})
    assert row.alert_level == level
    assert row.share == pytest.approx(spent / 100)
    assert row.exhausted is (spent >= 100)
    assert row.budget_usd == 100 and row.hard_stop


def test_budget_rows_per_team_and_day_with_own_levels():
    spend = pd.DataFrame({
        "team": ["pay", "pay", "pay", "search", "nobudget"],
        "day": ["d1", "d1", "d2", "d1", "d1"],
        "spent_usd": [30.0, 30.0, 10.0, 50.0, 999.0],
    })
    budgets = {"pay": TeamBudget(usd_per_day=100),
               "search": TeamBudget(usd_per_day=100, alert_levels=[0.5, 1.0], hard_stop=False)}
    rows = budget_status(spend, budgets)
    assert [(r.team, r.day, r.spent_usd, r.alert_level) for r in rows] == [
        ("pay", "d1", 60.0, "none"), ("pay", "d2", 10.0, "none"), ("search", "d1", 50.0, "50")]
    assert isinstance(rows[0], BudgetStatus) and rows[0].as_dict()["team"] == "pay"
    assert budget_status(spend, {}) == []
    with pytest.raises(ValueError, match="spend"):
        budget_status(spend.drop(columns="spent_usd"), budgets)
