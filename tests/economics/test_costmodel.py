"""The cost model: every pricing rule, the outcome definitions, decomposition, reservations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.manifest import FleetManifest, load_fleet
from contracts.tables import TABLES
from economics.costmodel import (
    TokenUsage,
    attempt_costs,
    build_ledger,
    cost_decomposition,
    cost_per_green_pr,
    escape_rate,
    first_pass_yield,
    green_pr_mask,
    price_calls,
    reservation_view,
    spot_share,
    task_spend,
    tier_prices,
    unit_economics,
    usd_per_1k_tokens,
    window_hours,
)

STARTER_FLEET = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "fleet.yaml"
DAY = "2026-11-20"


# --------------------------------------------------------------------------- helpers
def econ(gpus: float, prefill: float, decode: float, **extra: Any) -> dict[str, Any]:
    # $3.60/GPU-hour makes one GPU-second cost $0.001: prices come out round.
    return {"gpus": gpus, "usd_per_gpu_hour": 3.6, "prefill_tokens_per_s": prefill,
            "decode_tokens_per_s": decode, **extra}


def make_fleet(**spec_extra: Any) -> FleetManifest:
    """S: $1e-6 in / $2e-6 out; M bf16: $2e-6 / $4e-6, M int8: $1e-6 / $2e-6; L: $8e-6 / $16e-6."""
    spec = {
        "pricing": {"cached_input_discount": 0.9, "response_cache_usd_per_call": 0.0001},
        "tiers": [
            {"name": "S", "rank": 0, "model": "s", "default_variant": "bf16",
             "variants": [{"name": "bf16", "weights": "w/s", "economics": econ(1, 1000, 500)}]},
            {"name": "M", "rank": 1, "model": "m", "default_variant": "bf16",
             "variants": [
                 {"name": "bf16", "weights": "w/m", "economics": econ(2, 1000, 500)},
                 {"name": "int8", "weights": "w/m8",
                  "economics": econ(1, 1000, 500, replicas=0)},
             ]},
            {"name": "L", "rank": 2, "model": "l", "default_variant": "bf16",
             "variants": [{"name": "bf16", "weights": "w/l", "economics": econ(8, 1000, 500)}]},
        ],
    }
    spec.update(spec_extra)
    return FleetManifest.model_validate({"spec": spec})


def _table(name: str, rows: list[dict[str, Any]], defaults: dict[str, Any]) -> pd.DataFrame:
    columns = TABLES[name]
    data = {c: [r.get(c, defaults.get(c)) for r in rows] for c in columns}
    frame = pd.DataFrame(data, columns=list(columns))
    return frame.astype(columns)


def make_frames(tasks: list[dict[str, Any]], attempts: list[dict[str, Any]] = (),
                calls: list[dict[str, Any]] = ()) -> tuple[pd.DataFrame, ...]:
    """Telemetry frames with exactly the tables.py columns; unspecified fields get defaults.

    An attempt's span id is ``<task>-a<n>`` (``-<purpose>`` for non-serve attempts); a call's
    parent is that span unless given.
    """
    task_rows = [{"span_id": f"s-{t['task_id']}", "trace_id": f"tr-{t['task_id']}", **t}
                 for t in tasks]
    attempt_rows = []
    for a in attempts:
        a = {"attempt": 1, **a}
        suffix = "" if a.get("purpose", "serve") == "serve" else f"-{a['purpose']}"
        span = a.get("span_id") or f"{a['task_id']}-a{a['attempt']}{suffix}"
        attempt_rows.append({"span_id": span, "trace_id": f"tr-{a['task_id']}",
                             "parent_span_id": f"s-{a['task_id']}", **a})
    call_rows = []
    for i, c in enumerate(calls):
        c = {"attempt": 1, **c}
        call_rows.append({"span_id": f"c{i}", "trace_id": f"tr-{c['task_id']}",
                          "parent_span_id": f"{c['task_id']}-a{c['attempt']}", **c})
    common = {"day": DAY, "start_ns": 0, "end_ns": 1, "policy_version": "1"}
    t = _table("tasks", task_rows, {
        **common, "family": "fam", "team": "team-a", "repo": "repo", "agent": "agent",
        "outcome": "green", "verifier_passed": True, "review_accepted": None,
        "verifier_cost_usd": float("nan"), "features": "{}"})
    a = _table("attempts", attempt_rows, {
        **common, "tier": "S", "variant": "bf16", "adapter": None, "passed": True,
        "purpose": "serve", "propensity": float("nan"), "cost_usd": float("nan")})
    c = _table("calls", call_rows, {
        **common, "model": "m", "tier": "S", "variant": "bf16", "adapter": None,
        "input_tokens": 1000, "output_tokens": 0, "cached_input_tokens": 0, "cache": "miss",
        "cost_usd": float("nan")})
    return t, a, c


def one_call(**call: Any) -> pd.DataFrame:
    return make_frames([], [], [{"task_id": "t1", **call}])[2]


# ------------------------------------------------------------------- planning economics
def test_unit_economics_matches_the_practice_worked_example():
    usage = [
        TokenUsage("Tier-S", 8_000, 0.00012),
        TokenUsage("Tier-M", 40_000, 0.00063),
        TokenUsage("Tier-L", 6_000, 0.0079, share_of_tasks=0.10),
        TokenUsage("embeddings", 20_000, 0.0000175),
    ]
    at_70 = unit_economics(usage, verifier_usd=0.018, eval_usd=0.012, fpy=0.70)
    assert at_70.token_usd == pytest.approx(0.03125)
    assert at_70.per_task_usd == pytest.approx(0.06125)
    assert at_70.cost_per_green_pr == pytest.approx(0.0875)
    at_30 = unit_economics(usage, verifier_usd=0.018, eval_usd=0.012, fpy=0.30)
    assert round(at_30.cost_per_green_pr, 4) == 0.2042
    nothing_passes = unit_economics(usage, fpy=0.0)
    assert nothing_passes.cost_per_green_pr is None and "FPY" in nothing_passes.reason


def test_starter_economics_give_the_practice_tier_prices():
    assert round(usd_per_1k_tokens(1, 2.50, 6_000), 5) == 0.00012
    assert round(usd_per_1k_tokens(2, 2.50, 2_200), 5) == 0.00063
    assert round(usd_per_1k_tokens(8, 2.50, 700), 4) == 0.0079
    prices = tier_prices(load_fleet(STARTER_FLEET)).set_index("tier")["usd_per_1k_input"]
    assert [round(prices["S"], 5), round(prices["M"], 5), round(prices["L"], 4)] == [
        0.00012, 0.00063, 0.0079]
    assert 60 < round(prices["L"], 4) / round(prices["S"], 5) < 70  # "about 65x"


# ------------------------------------------------------------------------- call prices
def test_call_pays_prefill_and_decode_prices_of_its_tier_and_variant():
    fleet = make_fleet()
    tokens = {"task_id": "t", "input_tokens": 1000, "output_tokens": 100}
    calls = make_frames([], [], [
        {**tokens, "tier": "S"},
        {**tokens, "tier": "M", "variant": "bf16"},
        {**tokens, "tier": "M", "variant": "int8"},
        {**tokens, "tier": "L"},
    ])[2]
    priced = price_calls(calls, fleet)
    assert priced.cost_usd == pytest.approx([0.0012, 0.0024, 0.0012, 0.0096])
    assert priced.unpriced.calls == 0 and priced.unpriced.variant_fallbacks == {}


def test_cached_input_tokens_pay_the_discounted_price():
    priced = price_calls(one_call(input_tokens=1000, cached_input_tokens=600,
                                  output_tokens=100, cache="prefix"), make_fleet())
    # 400 uncached at 1e-6, 600 cached at 1e-6 * 10%, 100 out at 2e-6
    assert priced.cost_usd[0] == pytest.approx(400e-6 + 60e-6 + 200e-6)
    assert priced.cache_savings_usd[0] == pytest.approx(600e-6 * 0.9)
    assert priced.cache_hit[0]


def test_cached_tokens_are_clipped_to_the_input_tokens():
    priced = price_calls(one_call(input_tokens=100, cached_input_tokens=500, cache="prefix"),
                         make_fleet())
    assert priced.cost_usd[0] == pytest.approx(100e-6 * 0.1)


def test_discount_comes_from_the_manifest():
    fleet = make_fleet(pricing={"cached_input_discount": 0.5})
    priced = price_calls(one_call(input_tokens=1000, cached_input_tokens=1000, cache="prefix"),
                         fleet)
    assert priced.cost_usd[0] == pytest.approx(500e-6)


def test_response_cache_hit_costs_the_per_call_fee_only():
    priced = price_calls(one_call(tier="L", input_tokens=1000, output_tokens=100,
                                  cache="response"), make_fleet())
    assert priced.cost_usd[0] == pytest.approx(0.0001)
    assert priced.cache_savings_usd[0] == pytest.approx(0.0096 - 0.0001)
    assert priced.busy_gpu_seconds[0] == 0.0


def test_explicit_call_cost_overrides_the_model():
    priced = price_calls(one_call(tier="L", input_tokens=10**6, cost_usd=0.5), make_fleet())
    assert priced.cost_usd[0] == 0.5
    assert priced.cache_savings_usd[0] == 0.0


def test_explicit_attempt_cost_overrides_the_sum_of_its_calls():
    _, attempts, calls = make_frames(
        [],
        [{"task_id": "t", "attempt": 1}, {"task_id": "t", "attempt": 2, "cost_usd": 0.25}],
        [{"task_id": "t", "attempt": 1}, {"task_id": "t", "attempt": 1},
         {"task_id": "t", "attempt": 2}],
    )
    costs = attempt_costs(attempts, calls, make_fleet())
    assert costs.tolist() == pytest.approx([0.002, 0.25])


def test_unknown_variant_falls_back_to_the_tier_default():
    calls = make_frames([], [], [
        {"task_id": "t", "tier": "M", "variant": "fp4"},
        {"task_id": "t", "tier": "M", "variant": None},
    ])[2]
    priced = price_calls(calls, make_fleet())
    assert priced.cost_usd == pytest.approx([0.002, 0.002])  # M's default: bf16
    assert priced.unpriced.calls == 0
    assert priced.unpriced.variant_fallbacks == {"M/fp4": 1, "M/None": 1}


def test_unknown_tier_prices_at_zero_and_is_reported_not_raised():
    calls = make_frames([], [], [
        {"task_id": "t", "tier": "XL"},
        {"task_id": "t", "tier": "XL"},
        {"task_id": "t", "tier": "XL", "cost_usd": 0.3},  # explicit: priced
        {"task_id": "t", "tier": "S"},
    ])[2]
    priced = price_calls(calls, make_fleet())
    assert priced.cost_usd == pytest.approx([0.0, 0.0, 0.3, 0.001])
    assert priced.unpriced.calls == 2
    assert priced.unpriced.tiers == {"XL": 2}
    assert priced.priced.tolist() == [False, False, True, True]


# ----------------------------------------------------------------------- task spend
def test_spend_split_by_purpose_with_verifier_and_rework():
    tasks, attempts, calls = make_frames(
        [{"task_id": "t", "verifier_cost_usd": 0.01}],
        [
            {"task_id": "t", "attempt": 1, "passed": False},
            {"task_id": "t", "attempt": 2, "tier": "M", "passed": True},
            {"task_id": "t", "attempt": 3, "purpose": "shadow", "cost_usd": 0.02},
            {"task_id": "t", "attempt": 4, "purpose": "gate", "cost_usd": 0.03},
        ],
        [{"task_id": "t", "attempt": 1}, {"task_id": "t", "attempt": 2, "tier": "M"}],
    )
    spend = task_spend(tasks, attempts, calls, make_fleet()).loc["t"]
    assert spend["spend_serve"] == pytest.approx(0.001 + 0.002)
    assert spend["spend_rework"] == pytest.approx(0.001)
    assert spend["spend_shadow"] == pytest.approx(0.02)
    assert spend["spend_gate"] == pytest.approx(0.03)
    assert spend["spend_eval"] == pytest.approx(0.05)
    assert spend["spend_verifier"] == pytest.approx(0.01)
    assert spend["spend_total"] == pytest.approx(0.003 + 0.05 + 0.01)


def test_missing_verifier_cost_is_zero_or_the_configured_default():
    tasks, attempts, calls = make_frames([{"task_id": "a"}, {"task_id": "b",
                                                             "verifier_cost_usd": 0.5}])
    fleet = make_fleet()
    assert task_spend(tasks, attempts, calls, fleet)["spend_verifier"].tolist() == [0.0, 0.5]
    with_default = task_spend(tasks, attempts, calls, fleet, default_verifier_cost_usd=0.1)
    assert with_default["spend_verifier"].tolist() == [0.1, 0.5]


def test_calls_follow_their_parent_span_when_attempt_numbers_collide():
    # A shadow run numbered 1 like the serve try: the call's parent span decides.
    tasks, attempts, calls = make_frames(
        [{"task_id": "t"}],
        [{"task_id": "t", "attempt": 1}, {"task_id": "t", "attempt": 1, "purpose": "shadow"}],
        [{"task_id": "t", "attempt": 1, "tier": "L", "parent_span_id": "t-a1-shadow"},
         {"task_id": "t", "attempt": 1, "tier": "S"}],
    )
    spend = task_spend(tasks, attempts, calls, make_fleet()).loc["t"]
    assert spend["spend_shadow"] == pytest.approx(0.008)
    assert spend["spend_serve"] == pytest.approx(0.001)


def test_call_without_attempt_still_counts_as_serve_spend():
    tasks, attempts, calls = make_frames([{"task_id": "t"}], [], [{"task_id": "t", "attempt": 7}])
    spend = task_spend(tasks, attempts, calls, make_fleet()).loc["t"]
    assert spend["spend_serve"] == pytest.approx(0.001)
    assert spend["spend_total"] == pytest.approx(0.001)


def test_spend_of_a_task_outside_the_window_is_kept():
    tasks, attempts, calls = make_frames([{"task_id": "in"}],
                                         [{"task_id": "out"}], [{"task_id": "out"}])
    spend = task_spend(tasks, attempts, calls, make_fleet())
    assert spend.loc["out", "spend_total"] == pytest.approx(0.001)
    assert spend["spend_total"].sum() == pytest.approx(0.001)


# -------------------------------------------------------------------- outcomes, yield
def test_green_pr_needs_green_outcome_verifier_and_accepted_review_where_recorded():
    tasks = make_frames([
        {"task_id": "a"},                                         # green, no review
        {"task_id": "b", "review_accepted": True},                # green, accepted
        {"task_id": "c", "review_accepted": False},               # refused by review
        {"task_id": "d", "verifier_passed": False},               # verifier failed
        {"task_id": "e", "outcome": "human_triage"},              # not green
        {"task_id": "f", "verifier_passed": None},                # verdict missing
    ])[0]
    assert green_pr_mask(tasks).tolist() == [True, True, False, False, False, False]


def test_first_pass_yield_reads_the_first_serve_attempt():
    tasks, attempts, _ = make_frames(
        [{"task_id": x} for x in "abcd"],
        [
            {"task_id": "a", "attempt": 1, "passed": True},
            {"task_id": "b", "attempt": 2, "passed": True},    # listed first, but attempt 2
            {"task_id": "b", "attempt": 1, "passed": False},
            {"task_id": "c", "attempt": 1, "purpose": "shadow", "passed": True},
            {"task_id": "c", "attempt": 2, "passed": False},
            # d: no serve attempt, not in the denominator
            {"task_id": "d", "attempt": 1, "purpose": "gate", "passed": True},
        ],
    )
    assert first_pass_yield(tasks, attempts) == pytest.approx(1 / 3)
    ledger = build_ledger(tasks, attempts, make_frames([])[2], make_fleet())
    assert ledger.task_first_serve_passed.tolist() == [True, False, False, False]
    assert ledger.task_has_serve.tolist() == [True, True, True, False]
    assert first_pass_yield(tasks.iloc[:0], attempts) is None


def test_escape_rate_is_refused_passes_over_reviewed_tasks():
    tasks = make_frames([
        {"task_id": "a", "review_accepted": True},
        {"task_id": "b", "review_accepted": False, "outcome": "human_triage"},  # escaped
        {"task_id": "c", "review_accepted": False, "outcome": "failed",
         "verifier_passed": False},                                           # not a pass
        {"task_id": "d", "review_accepted": False},                           # escaped
        {"task_id": "e"},                                                     # no review
    ])[0]
    assert escape_rate(tasks) == pytest.approx(2 / 4)
    assert escape_rate(tasks.iloc[4:]) is None


def test_cost_per_green_pr_handles_zero_greens_explicitly():
    assert cost_per_green_pr(10.0, 4).value == 2.5
    none = cost_per_green_pr(10.0, 0)
    assert none.value is None and "no Green PRs" in none.reason and "$10.0000" in none.reason
    assert cost_per_green_pr(float("inf"), 3).value is None


# -------------------------------------------------------------------- decomposition
def test_decomposition_components_sum_to_the_total():
    tasks, attempts, calls = make_frames(
        [{"task_id": "t1", "verifier_cost_usd": 0.004},
         {"task_id": "t2", "verifier_cost_usd": 0.002, "outcome": "failed"}],
        [
            {"task_id": "t1", "attempt": 1, "passed": False},
            {"task_id": "t1", "attempt": 2, "tier": "L", "passed": True},
            {"task_id": "t1", "attempt": 3, "tier": "M", "purpose": "shadow"},
            {"task_id": "t2", "attempt": 1, "tier": "XL", "passed": False},
            {"task_id": "t2", "attempt": 2, "purpose": "gate", "cost_usd": 0.05},
        ],
        [
            {"task_id": "t1", "attempt": 1, "cache": "prefix", "cached_input_tokens": 500},
            {"task_id": "t1", "attempt": 2, "tier": "L", "output_tokens": 100},
            {"task_id": "t1", "attempt": 2, "tier": "L", "cache": "response"},
            {"task_id": "t1", "attempt": 3, "tier": "M"},
            {"task_id": "t2", "attempt": 1, "tier": "XL"},
            {"task_id": "t2", "attempt": 9, "cost_usd": 0.007},  # no attempt: unlinked
        ],
    )
    fleet = make_fleet()
    total = task_spend(tasks, attempts, calls, fleet)["spend_total"].sum()
    frame = cost_decomposition(tasks, attempts, calls, fleet).set_index(["component", "detail"])
    in_total = frame[frame["in_total"]]
    assert in_total["usd"].sum() == pytest.approx(total)
    assert in_total["share"].sum() == pytest.approx(1.0)
    assert frame.loc[("tokens", "L"), "usd"] == pytest.approx(0.0096 + 0.0001)
    assert frame.loc[("rework", "S"), "usd"] == pytest.approx(500e-6 + 50e-6)
    assert frame.loc[("eval", "shadow"), "usd"] == pytest.approx(0.002)
    assert frame.loc[("eval", "gate"), "usd"] == pytest.approx(0.05)
    assert frame.loc[("verifier", None), "usd"] == pytest.approx(0.006)
    assert frame.loc[("unlinked", None), "usd"] == pytest.approx(0.007)
    assert frame.loc[("cache_savings", "S"), "usd"] == pytest.approx(450e-6)
    assert frame.loc[("cache_savings", "L"), "usd"] == pytest.approx(0.008 - 0.0001)
    assert not frame.loc[("cache_savings", "S"), "in_total"]
    # one Green PR (t1): per Green PR equals usd
    assert frame.loc[("verifier", None), "per_green_pr"] == pytest.approx(0.006)


def test_decomposition_with_no_greens_has_no_per_green_figure():
    tasks, attempts, calls = make_frames([{"task_id": "t", "outcome": "failed"}],
                                         [{"task_id": "t", "passed": False}],
                                         [{"task_id": "t"}])
    frame = cost_decomposition(tasks, attempts, calls, make_fleet())
    assert frame["per_green_pr"].isna().all()
    assert frame.loc[frame["in_total"], "usd"].sum() == pytest.approx(0.001)


# ------------------------------------------------------------------- reservation view
def test_reservation_view_utilisation_idle_and_costs():
    fleet = make_fleet()
    # S: 1 replica x 1 GPU; a call of 3600k uncached input at 1000 tok/s = 3600 GPU-s = 1 h
    calls = make_frames([], [], [
        {"task_id": "t", "tier": "S", "input_tokens": 3_600_000},
        {"task_id": "t", "tier": "S", "input_tokens": 3_600_000, "cached_input_tokens": 3_600_000,
         "cache": "prefix"},                              # no prefill: no busy time
        {"task_id": "t", "tier": "L", "output_tokens": 900_000, "input_tokens": 0},
        {"task_id": "t", "tier": "L", "output_tokens": 900_000, "input_tokens": 0,
         "cache": "response"},                            # served from cache: no GPU
    ])[2]
    view = reservation_view(calls, fleet)
    assert view.hours == 24.0
    rows = view.by_variant.set_index(["tier", "variant"])
    s, l_ = rows.loc[("S", "bf16")], rows.loc[("L", "bf16")]
    assert s["provisioned_gpu_hours"] == 24.0
    assert s["busy_gpu_hours"] == pytest.approx(1.0)
    assert s["utilisation"] == pytest.approx(1 / 24)
    assert s["idle_share"] == pytest.approx(23 / 24)
    assert s["reservation_usd"] == pytest.approx(24 * 3.6)
    assert s["usage_usd"] == pytest.approx(3.6 + 0.36)
    # L: 8 GPUs; 900k output at 500 tok/s = 1800 s on a replica = 4 GPU-hours
    assert l_["busy_gpu_hours"] == pytest.approx(4.0)
    assert rows.loc[("M", "int8"), "provisioned_gpu_hours"] == 0.0
    assert math.isnan(rows.loc[("M", "int8"), "utilisation"])
    provisioned = 24 * (1 + 2 + 0 + 8)
    assert view.provisioned_gpu_hours == pytest.approx(provisioned)
    assert view.utilisation == pytest.approx(5.0 / provisioned)
    assert view.idle_share == pytest.approx(1 - 5.0 / provisioned)
    assert view.reservation_usd == pytest.approx(provisioned * 3.6)
    assert view.usage_usd == pytest.approx(3.6 + 0.36 + 14.4 + 0.0001)
    assert reservation_view(calls, fleet, hours=48).provisioned_gpu_hours == 2 * provisioned


def test_spot_share_is_the_share_of_provisioned_spend_on_spot():
    fleet = make_fleet()
    assert spot_share(fleet) == 0.0
    spot = make_fleet(tiers=[
        {"name": "S", "rank": 0, "model": "s", "variants": [
            {"name": "a", "weights": "w", "economics": econ(1, 1, 1, capacity_type="spot")},
            {"name": "b", "weights": "w", "economics": econ(3, 1, 1)}]},
    ])
    assert spot_share(spot) == pytest.approx(0.25)


def test_window_hours_counts_distinct_days():
    _, _, calls = make_frames([], [], [{"task_id": "t"}, {"task_id": "t", "day": "2026-11-21"}])
    assert window_hours(calls) == 48.0
    assert window_hours(calls.iloc[:0]) == 0.0


def test_empty_telemetry_prices_to_nothing():
    tasks, attempts, calls = make_frames([])
    ledger = build_ledger(tasks, attempts, calls, make_fleet())
    assert ledger.n_tasks == 0
    assert all(np.size(v) == 0 for v in ledger.task_spend().values())
