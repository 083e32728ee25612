"""API-priced tiers in the cost model: list prices per token and per request, no GPUs."""

from __future__ import annotations

import pandas as pd
import pytest
from test_costmodel import econ, make_frames

from contracts.manifest import FleetManifest
from economics.costmodel import price_calls, reservation_view, tier_prices
from economics.metrics import compute_metrics

API = {"usd_per_1m_input_tokens": 3.0, "usd_per_1m_cached_input_tokens": 0.3,
       "usd_per_1m_output_tokens": 15.0, "usd_per_request": 0.002}


def api_fleet(api=API) -> FleetManifest:
    return FleetManifest.model_validate({"spec": {
        "pricing": {"cached_input_discount": 0.9, "response_cache_usd_per_call": 0.0001},
        "tiers": [
            {"name": "S", "rank": 0, "model": "s",
             "variants": [{"name": "bf16", "weights": "w/s", "economics": econ(1, 1000, 500)}]},
            {"name": "X", "rank": 1, "model": "vendor-x",
             "variants": [{"name": "api", "economics": api}]},
        ]}})


def test_an_api_call_pays_its_list_prices_and_the_per_request_price():
    calls = make_frames([], [], [
        {"task_id": "t1", "tier": "X", "variant": "api", "input_tokens": 10_000,
         "cached_input_tokens": 4_000, "output_tokens": 1_000, "cache": "prefix"},
        {"task_id": "t1", "tier": "X", "variant": None, "input_tokens": 1_000,
         "output_tokens": 0},
        {"task_id": "t1", "tier": "X", "variant": "api", "input_tokens": 1_000,
         "output_tokens": 50, "cache": "response"},
    ])[2]
    p = price_calls(calls, api_fleet())
    first = 6_000 * 3e-6 + 4_000 * 0.3e-6 + 1_000 * 15e-6 + 0.002
    assert p.cost_usd[0] == pytest.approx(first)
    assert p.cost_usd[1] == pytest.approx(1_000 * 3e-6 + 0.002)  # default variant
    assert p.cost_usd[2] == pytest.approx(0.0001)  # a response hit sends no request
    assert p.uncached_cost_usd[0] == pytest.approx(10_000 * 3e-6 + 1_000 * 15e-6 + 0.002)
    assert p.cache_savings_usd[0] == pytest.approx(4_000 * (3e-6 - 0.3e-6))
    assert p.busy_gpu_seconds.tolist() == [0.0, 0.0, 0.0]  # an API call occupies no GPU


def test_per_request_only_tier_and_an_explicit_cost_still_wins():
    fleet = api_fleet({"usd_per_request": 0.05})
    calls = make_frames([], [], [
        {"task_id": "t1", "tier": "X", "variant": "api", "input_tokens": 9_999,
         "output_tokens": 999},
        {"task_id": "t1", "tier": "X", "variant": "api", "cost_usd": 0.5}])[2]
    assert price_calls(calls, fleet).cost_usd.tolist() == pytest.approx([0.05, 0.5])


def test_attempt_pricing_is_one_rule_for_api_and_self_hosted_tiers():
    from economics.costmodel import price_attempts

    tasks, attempts, calls = make_frames(
        [{"task_id": "t1"}],
        [{"task_id": "t1", "attempt": 1, "tier": "S", "passed": False},
         {"task_id": "t1", "attempt": 2, "tier": "X", "variant": "api", "cost_usd": 0.7}],
        [{"task_id": "t1", "attempt": 1, "tier": "S", "input_tokens": 1000},
         {"task_id": "t1", "attempt": 2, "tier": "X", "variant": "api", "input_tokens": 1000}])
    spans = price_attempts(attempts, calls, api_fleet())
    assert spans.cost_usd.tolist() == pytest.approx([1000 * 1e-6, 0.7])
    assert spans.explicit.tolist() == [False, True]
    assert spans.calls_usd[1] == pytest.approx(1000 * 3e-6 + 0.002)
    row = compute_metrics(tasks, attempts, calls, api_fleet()).iloc[0]
    assert row["spend_total"] == pytest.approx(1000 * 1e-6 + 0.7)


def test_api_tiers_provision_no_gpus_in_the_reservation_view_and_metrics():
    fleet = api_fleet()
    tasks, attempts, calls = make_frames(
        [{"task_id": "t1"}], [{"task_id": "t1", "tier": "X", "variant": "api"}],
        [{"task_id": "t1", "tier": "X", "variant": "api", "input_tokens": 1_000_000}])
    view = reservation_view(calls, fleet, hours=24)
    x = view.by_variant.set_index("tier").loc["X"]
    assert x["provisioned_gpu_hours"] == 0 and x["busy_gpu_hours"] == 0
    assert pd.isna(x["utilisation"]) and x["reservation_usd"] == 0
    assert x["usage_usd"] == pytest.approx(3.0 + 0.002)
    assert view.provisioned_gpu_hours == pytest.approx(24.0)  # S only: 1 replica, 1 GPU
    row = compute_metrics(tasks, attempts, calls, fleet).iloc[0]
    assert row["gpu_utilisation"] == 0.0 and row["spend_total"] == pytest.approx(3.002)
    prices = tier_prices(fleet).set_index("tier")
    assert prices.loc["X", "pricing"] == "api" and prices.loc["S", "pricing"] == "self_hosted"
    assert prices.loc["X", "usd_per_1k_cached_input"] == pytest.approx(0.0003)
    assert prices.loc["X", "usd_per_request"] == pytest.approx(0.002)
    assert prices.loc["X", "gpus"] == 0 and prices.loc["X", "replicas"] == 0
