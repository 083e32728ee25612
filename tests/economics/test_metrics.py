"""Metrics per group: hand-checked small windows, and a random window against a naive
row-by-row reference implementation of the same rules."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.manifest import FleetManifest
from contracts.tables import TABLES
from economics.metrics import METRIC_COLUMNS, compute_metrics, runaway_cap
from policies.policy import Policy

DAY = "2026-11-20"


# --------------------------------------------------------------------------- helpers
def econ(gpus: float, **extra: Any) -> dict[str, Any]:
    # $3.60/GPU-hour, 1000 tok/s prefill, 500 tok/s decode: S pays $1e-6 in / $2e-6 out.
    return {"gpus": gpus, "usd_per_gpu_hour": 3.6, "prefill_tokens_per_s": 1000,
            "decode_tokens_per_s": 500, **extra}


def make_fleet() -> FleetManifest:
    return FleetManifest.model_validate({"spec": {
        "pricing": {"cached_input_discount": 0.9, "response_cache_usd_per_call": 0.0001},
        "tiers": [
            {"name": "S", "rank": 0, "model": "s",
             "variants": [{"name": "bf16", "weights": "w", "economics": econ(1)}]},
            {"name": "M", "rank": 1, "model": "m",
             "variants": [{"name": "bf16", "weights": "w", "economics": econ(2)}]},
            {"name": "L", "rank": 2, "model": "l",
             "variants": [{"name": "bf16", "weights": "w",
                           "economics": econ(8, capacity_type="spot")}]},
        ]}})


def _table(name: str, rows: list[dict[str, Any]], defaults: dict[str, Any]) -> pd.DataFrame:
    columns = TABLES[name]
    data = {c: [r.get(c, defaults.get(c)) for r in rows] for c in columns}
    return pd.DataFrame(data, columns=list(columns)).astype(columns)


def make_frames(tasks: list[dict[str, Any]], attempts: list[dict[str, Any]] = (),
                calls: list[dict[str, Any]] = ()) -> tuple[pd.DataFrame, ...]:
    """Frames with exactly the tables.py columns; calls' parent is ``<task>-a<attempt>``."""
    common = {"day": DAY, "start_ns": 0, "end_ns": 1, "policy_version": "1"}
    t = _table("tasks", [{"span_id": f"s-{r['task_id']}", **r} for r in tasks], {
        **common, "trace_id": "tr", "family": "fam", "team": "team-a", "repo": "repo",
        "agent": "agent", "outcome": "green", "verifier_passed": True, "review_accepted": None,
        "verifier_cost_usd": float("nan"), "features": "{}"})
    a = _table("attempts", [{"attempt": 1, **r} for r in attempts], {
        **common, "trace_id": "tr", "tier": "S", "variant": "bf16", "adapter": None,
        "passed": True, "purpose": "serve", "propensity": float("nan"),
        "cost_usd": float("nan")})
    a["span_id"] = a["task_id"] + "-a" + a["attempt"].astype("string")
    a["parent_span_id"] = "s-" + a["task_id"]
    c = _table("calls", [{"attempt": 1, **r} for r in calls], {
        **common, "trace_id": "tr", "model": "m", "tier": "S", "variant": "bf16",
        "adapter": None, "input_tokens": 1000, "output_tokens": 0, "cached_input_tokens": 0,
        "cache": "miss", "cost_usd": float("nan")})
    c["span_id"] = "c" + pd.Series(range(len(c)), dtype="string")
    c["parent_span_id"] = c["task_id"] + "-a" + c["attempt"].astype("string")
    return t, a, c


def small_window() -> tuple[pd.DataFrame, ...]:
    """Two teams. team-a: t1 green first try on S; t2 S fails, M passes (green, review ok).
    team-b: t3 fails on S, then L passes but review refuses (escape); shadow + gate spend."""
    return make_frames(
        [
            {"task_id": "t1", "team": "team-a", "verifier_cost_usd": 0.001},
            {"task_id": "t2", "team": "team-a", "review_accepted": True},
            {"task_id": "t3", "team": "team-b", "outcome": "human_triage",
             "review_accepted": False, "day": "2026-11-21"},
        ],
        [
            {"task_id": "t1", "attempt": 1},
            {"task_id": "t2", "attempt": 1, "passed": False},
            {"task_id": "t2", "attempt": 2, "tier": "M"},
            {"task_id": "t3", "attempt": 1, "passed": False},
            {"task_id": "t3", "attempt": 2, "tier": "L"},
            {"task_id": "t3", "attempt": 3, "purpose": "shadow", "cost_usd": 0.004},
            {"task_id": "t3", "attempt": 4, "purpose": "gate", "cost_usd": 0.006},
        ],
        [
            {"task_id": "t1", "attempt": 1, "cache": "prefix", "cached_input_tokens": 1000},
            {"task_id": "t2", "attempt": 1},
            {"task_id": "t2", "attempt": 2, "tier": "M", "cache": "response"},
            {"task_id": "t3", "attempt": 1},
            {"task_id": "t3", "attempt": 2, "tier": "L"},
        ],
    )


# ---------------------------------------------------------------------- hand-checked
def test_whole_window_row():
    tasks, attempts, calls = small_window()
    m = compute_metrics(tasks, attempts, calls, make_fleet())
    assert len(m) == 1
    row = m.iloc[0]
    assert row["tasks"] == 3 and row["green_prs"] == 2
    assert row["fpy"] == pytest.approx(1 / 3)
    assert row["escape_rate"] == pytest.approx(1 / 2)
    serve = 0.0001 + 0.001 + 0.0001 + 0.001 + 0.008  # t1 cached, t2 S + response, t3 S + L
    assert row["spend_serve"] == pytest.approx(serve)
    assert row["spend_rework"] == pytest.approx(0.002)
    assert row["spend_shadow"] == pytest.approx(0.004)
    assert row["spend_gate"] == pytest.approx(0.006)
    assert row["spend_eval"] == pytest.approx(0.010)
    assert row["spend_verifier"] == pytest.approx(0.001)
    total = serve + 0.010 + 0.001
    assert row["spend_total"] == pytest.approx(total)
    assert row["cost_per_green_pr"] == pytest.approx(total / 2)
    assert pd.isna(row["cost_per_green_pr_note"])
    assert row["eval_share"] == pytest.approx(0.010 / total)
    assert row["rework_share"] == pytest.approx(0.002 / total)
    assert row["calls"] == 5
    assert row["cache_hit_rate"] == pytest.approx(2 / 5)
    assert row["prefix_token_hit_rate"] == pytest.approx(1000 / 4000)  # response hit left out
    assert row["cache_savings_usd"] == pytest.approx(0.0009 + (0.002 - 0.0001))
    assert row["tier_share_S"] == pytest.approx(3 / 5)
    assert row["tier_share_M"] == pytest.approx(1 / 5)
    assert row["tier_share_L"] == pytest.approx(1 / 5)
    assert row["tier_L_share"] == pytest.approx(1 / 5)
    assert row["serve_attempts"] == 5
    assert row["avg_attempts_per_task"] == pytest.approx(5 / 3)
    assert row["runaway_loops"] == 0 and row["unpriced_calls"] == 0
    # 2 days x 24 h x 11 GPUs provisioned; busy: S 1 s x1 GPU (t2) + 1 s (t3) + 0 (t1 cached),
    # L 1 s x 8 GPUs
    assert row["gpu_utilisation"] == pytest.approx((2 + 8) / 3600 / (48 * 11))
    assert row["idle_share"] == pytest.approx(1 - row["gpu_utilisation"])
    assert row["spot_share"] == pytest.approx(8 / 11)


def test_column_order():
    tasks, attempts, calls = small_window()
    m = compute_metrics(tasks, attempts, calls, make_fleet(), by=["team"])
    tier_cols = ["tier_share_S", "tier_share_M", "tier_share_L"]
    fixed = list(METRIC_COLUMNS)
    at = fixed.index("cache_savings_usd") + 1
    assert list(m.columns) == ["team", *fixed[:at], *tier_cols, *fixed[at:]]


def test_groups_by_team_and_sums_match_the_whole_window():
    tasks, attempts, calls = small_window()
    fleet = make_fleet()
    by_team = compute_metrics(tasks, attempts, calls, fleet, by=["team"]).set_index("team")
    whole = compute_metrics(tasks, attempts, calls, fleet).iloc[0]
    assert by_team.index.tolist() == ["team-a", "team-b"]
    for col in ("tasks", "green_prs", "spend_total", "spend_eval", "calls", "serve_attempts"):
        assert by_team[col].sum() == pytest.approx(whole[col])
    b = by_team.loc["team-b"]
    assert b["green_prs"] == 0 and math.isnan(b["cost_per_green_pr"])
    assert "no Green PRs" in b["cost_per_green_pr_note"]
    assert b["escape_rate"] == 1.0 and b["fpy"] == 0.0
    # fleet-wide figures only where grouping by nothing or day
    assert by_team["gpu_utilisation"].isna().all()


def test_group_by_day_and_team_day():
    tasks, attempts, calls = small_window()
    fleet = make_fleet()
    by_day = compute_metrics(tasks, attempts, calls, fleet, by=["day"]).set_index("day")
    assert by_day.index.tolist() == ["2026-11-20", "2026-11-21"]
    assert by_day.loc["2026-11-21", "gpu_utilisation"] == pytest.approx(9 / 3600 / (24 * 11))
    team_day = compute_metrics(tasks, attempts, calls, fleet, by=["team", "day"])
    assert team_day[["team", "day"]].values.tolist() == [["team-a", "2026-11-20"],
                                                          ["team-b", "2026-11-21"]]


def test_spend_without_a_task_span_lands_in_the_unknown_group_on_its_own_day():
    tasks, attempts, calls = make_frames(
        [{"task_id": "t1"}],
        [{"task_id": "t1"}, {"task_id": "late", "day": "2026-11-22"}],
        [{"task_id": "t1"}, {"task_id": "late", "day": "2026-11-22"}],
    )
    fleet = make_fleet()
    by_team = compute_metrics(tasks, attempts, calls, fleet, by=["team"]).set_index("team")
    assert by_team.loc["(unknown)", "tasks"] == 0
    assert by_team.loc["(unknown)", "spend_total"] == pytest.approx(0.001)
    by_day = compute_metrics(tasks, attempts, calls, fleet, by=["day"]).set_index("day")
    assert by_day.loc["2026-11-22", "spend_total"] == pytest.approx(0.001)
    whole = compute_metrics(tasks, attempts, calls, fleet).iloc[0]
    assert whole["tasks"] == 1 and whole["spend_total"] == pytest.approx(0.002)


def test_runaway_loops_default_policy_cap_and_explicit():
    attempts = [{"task_id": "t", "attempt": n, "passed": n == 6} for n in range(1, 7)]
    tasks, attempts, calls = make_frames([{"task_id": "t"}, {"task_id": "u"}], attempts)
    fleet = make_fleet()
    assert compute_metrics(tasks, attempts, calls, fleet)["runaway_loops"].item() == 0
    assert compute_metrics(tasks, attempts, calls, fleet,
                           runaway_attempts=5)["runaway_loops"].item() == 1
    policy = Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": datetime(2026, 1, 1, tzinfo=UTC)},
        "spec": {"routing": {"escalation": ["S", "M", "L"]},
                 "guardrails": {"max_attempts_per_task": 4}}})
    assert runaway_cap(policy) == 4 and runaway_cap(None) == 10
    assert runaway_cap(policy, 8) == 8
    assert compute_metrics(tasks, attempts, calls, fleet,
                           policy=policy)["runaway_loops"].item() == 1
    assert compute_metrics(tasks, attempts, calls, fleet, policy=policy,
                           runaway_attempts=6)["runaway_loops"].item() == 0


def test_unknown_tier_is_counted_and_gets_its_own_share_column():
    tasks, attempts, calls = make_frames([{"task_id": "t"}], [{"task_id": "t", "tier": "XL"}],
                                         [{"task_id": "t", "tier": "XL"}])
    m = compute_metrics(tasks, attempts, calls, make_fleet()).iloc[0]
    assert m["unpriced_calls"] == 1 and m["spend_total"] == 0.0
    assert m["tier_share_XL"] == 1.0 and m["tier_L_share"] == 0.0


def test_defaults_for_verifier_cost_and_explicit_window_hours():
    tasks, attempts, calls = make_frames([{"task_id": "t"}])
    m = compute_metrics(tasks, attempts, calls, make_fleet(), default_verifier_cost_usd=0.02,
                        hours=1.0).iloc[0]
    assert m["spend_verifier"] == pytest.approx(0.02)
    assert m["gpu_utilisation"] == 0.0 and m["idle_share"] == 1.0


def test_empty_window():
    tasks, attempts, calls = make_frames([])
    whole = compute_metrics(tasks, attempts, calls, make_fleet())
    assert len(whole) == 1 and whole["tasks"].item() == 0 and whole["spend_total"].item() == 0
    assert math.isnan(whole["fpy"].item()) and math.isnan(whole["cost_per_green_pr"].item())
    assert compute_metrics(tasks, attempts, calls, make_fleet(), by=["team"]).empty


def test_rejects_unknown_group_keys():
    tasks, attempts, calls = small_window()
    with pytest.raises(ValueError, match="group keys"):
        compute_metrics(tasks, attempts, calls, make_fleet(), by=["agent"])
    with pytest.raises(ValueError, match="group keys"):
        compute_metrics(tasks, attempts, calls, make_fleet(), by=["team", "team"])


# ------------------------------------------------------- random window vs a naive model
def random_window(seed: int, n_tasks: int = 150) -> tuple[pd.DataFrame, ...]:
    rng = random.Random(seed)
    tasks, attempts, calls = [], [], []
    for i in range(n_tasks):
        tid = f"t{i}"
        green = rng.random() < 0.6
        review = rng.choice([None, None, True, False])
        cost = rng.choice([float("nan"), 0.002])
        tasks.append({"task_id": tid, "team": rng.choice(["a", "b"]),
                      "family": rng.choice(["f1", "f2", "f3"]),
                      "day": rng.choice(["2026-11-20", "2026-11-21"]),
                      "outcome": "green" if green else rng.choice(["failed", "human_triage"]),
                      "verifier_passed": green or rng.random() < 0.2,
                      "review_accepted": review, "verifier_cost_usd": cost})
        for n in range(1, rng.randint(0, 4) + 1):
            purpose = rng.choice(["serve", "serve", "serve", "shadow", "gate"])
            explicit = 0.01 if rng.random() < 0.1 else float("nan")
            tier = rng.choice(["S", "M", "L", "XL"])
            attempts.append({"task_id": tid, "attempt": n, "tier": tier, "purpose": purpose,
                             "passed": rng.random() < 0.5, "cost_usd": explicit})
            for _ in range(rng.randint(0, 3)):
                inp = rng.randint(0, 5000)
                cache = rng.choice(["miss", "miss", "prefix", "response"])
                cached = rng.randint(0, inp) if cache == "prefix" else 0
                calls.append({"task_id": tid, "attempt": n, "tier": tier,
                              "input_tokens": inp, "output_tokens": rng.randint(0, 800),
                              "cached_input_tokens": cached,
                              "cache": cache,
                              "cost_usd": 0.003 if rng.random() < 0.05 else float("nan")})
    return make_frames(tasks, attempts, calls)


def naive_metrics(tasks, attempts, calls, fleet, by, default_verifier=0.0, cap=10):
    """The rules written row by row, to check the vectorised implementation against."""
    price = {t.name: (t.variant().economics.usd_per_input_token,
                      t.variant().economics.usd_per_output_token) for t in fleet.tiers}
    disc = fleet.spec.pricing.cached_input_discount
    fee = fleet.spec.pricing.response_cache_usd_per_call

    def call_cost(c):
        if not pd.isna(c.cost_usd):
            return c.cost_usd
        if c.cache == "response":
            return fee
        if c.tier not in price:
            return 0.0
        p_in, p_out = price[c.tier]
        cached = min(c.cached_input_tokens, c.input_tokens)
        uncached = c.input_tokens - cached
        return uncached * p_in + cached * p_in * (1 - disc) + c.output_tokens * p_out

    call_costs: dict[tuple[str, int], float] = {}
    for c in calls.itertuples():
        key = (c.task_id, c.attempt)
        call_costs[key] = call_costs.get(key, 0) + call_cost(c)
    rows = []
    for t in tasks.itertuples():
        mine = attempts[attempts.task_id == t.task_id].sort_values("attempt")
        spend = {"serve": 0.0, "shadow": 0.0, "gate": 0.0}
        serve = mine[mine.purpose == "serve"]
        for a in mine.itertuples():
            own = call_costs.get((t.task_id, a.attempt), 0)
            cost = a.cost_usd if not pd.isna(a.cost_usd) else own
            spend[a.purpose] += cost
        verifier = default_verifier if pd.isna(t.verifier_cost_usd) else t.verifier_cost_usd
        passed = not pd.isna(t.verifier_passed) and bool(t.verifier_passed)
        reviewed = not pd.isna(t.review_accepted)
        refused = reviewed and not bool(t.review_accepted)
        green = t.outcome == "green" and passed and not refused
        escaped = refused and (t.outcome == "green" or passed)
        rows.append({"team": t.team, "family": t.family, "day": t.day, "tasks": 1,
                     "green_prs": int(green),
                     "fpy_n": int(len(serve) and bool(serve.iloc[0].passed)),
                     "fpy_d": int(len(serve) > 0), "rev": int(reviewed), "esc": int(escaped),
                     "spend_total": sum(spend.values()) + verifier,
                     "spend_eval": spend["shadow"] + spend["gate"],
                     "serve_attempts": len(serve), "runaway_loops": int(len(serve) > cap),
                     "tier_L": int((serve.tier == "L").sum())})
    g = pd.DataFrame(rows).groupby(by).sum(numeric_only=True) if by else \
        pd.DataFrame(rows).sum(numeric_only=True).to_frame().T
    g["fpy"] = g.fpy_n / g.fpy_d
    g["escape_rate"] = g.esc / g.rev
    g["cost_per_green_pr"] = (g.spend_total / g.green_prs).where(g.green_prs > 0)
    g["tier_L_share"] = g.tier_L / g.serve_attempts
    return g.reset_index() if by else g


@pytest.mark.parametrize("by", [[], ["team"], ["family", "day"]])
@pytest.mark.parametrize("seed", [1, 2])
def test_vectorised_metrics_match_the_naive_reference(by, seed):
    tasks, attempts, calls = random_window(seed)
    fleet = make_fleet()
    fast = compute_metrics(tasks, attempts, calls, fleet, by=by, runaway_attempts=2)
    slow = naive_metrics(tasks, attempts, calls, fleet, by, cap=2)
    assert len(fast) == len(slow)
    if by:
        assert fast[by].astype(str).values.tolist() == slow[by].astype(str).values.tolist()
    for col in ("tasks", "green_prs", "fpy", "escape_rate", "spend_total", "spend_eval",
                "serve_attempts", "runaway_loops", "cost_per_green_pr", "tier_L_share"):
        np.testing.assert_allclose(fast[col].to_numpy(dtype=float),
                                   slow[col].to_numpy(dtype=float), rtol=1e-9, err_msg=col)
