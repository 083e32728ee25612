"""The FOCUS export against the spec: every FOCUS 1.1 mandatory column, non-null where the
spec says so, allowed values, hourly charge periods in monthly billing periods, tags that
carry team, repo, family and tier, and BilledCost that adds up to the metrics' spend."""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
import pytest

from contracts.manifest import FleetManifest
from contracts.tables import TABLES
from economics.focus import (
    CUSTOM_COLUMNS,
    FOCUS_COLUMNS,
    FocusAccount,
    build_focus,
    check_focus,
    focus_csv_frame,
)
from economics.metrics import compute_metrics

# The Mandatory columns of FOCUS 1.1 (FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec, tag v1.1,
# specification/columns/*.md, "Feature level: Mandatory"), written out here on purpose:
# the test holds the export to the spec, not to the module's own constant.
FOCUS_11_MANDATORY = {
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
}
# 1.1 columns whose "Allows nulls" is False.
FOCUS_11_NOT_NULL = {
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName", "ServiceSubcategory",
}
# Columns the brief names beside the mandatory ones (conditional/recommended in 1.1).
NAMED = {"ResourceId", "ResourceName", "ResourceType", "RegionId", "SubAccountId", "Tags",
         "ConsumedQuantity", "ConsumedUnit", "ChargeFrequency"}


def econ(gpus: float, **extra: Any) -> dict[str, Any]:
    return {"gpus": gpus, "usd_per_gpu_hour": 3.6, "prefill_tokens_per_s": 1000,
            "decode_tokens_per_s": 500, **extra}


FLEET = FleetManifest.model_validate({
    "metadata": {"name": "test-fleet"},
    "spec": {
        "pricing": {"cached_input_discount": 0.9},
        "tiers": [
            {"name": "S", "rank": 0, "model": "s",
             "variants": [{"name": "bf16", "weights": "w", "economics": econ(1)}]},
            {"name": "L", "rank": 1, "model": "l",
             "variants": [{"name": "bf16", "weights": "w",
                           "economics": econ(8, capacity_type="spot")},
                          {"name": "api", "economics": {"usd_per_1m_input_tokens": 3.0,
                                                        "usd_per_1m_output_tokens": 15.0}}]},
        ]}})


def _ns(when: str) -> int:
    return int(pd.Timestamp(when, tz="UTC").value)


def _table(name: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = TABLES[name]
    return pd.DataFrame({c: [r.get(c) for r in rows] for c in columns},
                        columns=list(columns)).astype(columns)


def window() -> tuple[pd.DataFrame, ...]:
    """payments: a task on S with a prefix hit, retried on L (spot); search: one on the
    API-priced L variant, with a verifier cost; one gate attempt with an explicit cost and no
    calls. Over two hours of 2026-11-30 and one of 2026-12-01 (two billing periods)."""
    def task(i, team, family, when, verifier=float("nan")):
        return {"span_id": f"t{i}", "trace_id": "tr", "task_id": f"task{i}", "day": when[:10],
                "start_ns": _ns(when), "end_ns": _ns(when) + 10**9, "family": family,
                "team": team, "repo": f"repo-{team}", "agent": "a", "outcome": "green",
                "verifier_passed": True, "verifier_cost_usd": verifier,
                "policy_version": "1", "features": "{}"}

    def attempt(i, n, tier, variant, when, purpose="serve", cost=float("nan")):
        return {"span_id": f"a{i}{n}", "trace_id": "tr", "parent_span_id": f"t{i}",
                "task_id": f"task{i}", "day": when[:10], "start_ns": _ns(when),
                "end_ns": _ns(when) + 10**9, "attempt": n, "tier": tier, "variant": variant,
                "passed": n > 1, "purpose": purpose, "propensity": float("nan"),
                "cost_usd": cost, "policy_version": "1"}

    def call(i, n, tier, variant, when, inp, out, cached=0):
        return {"span_id": f"c{i}{n}{inp}", "trace_id": "tr", "parent_span_id": f"a{i}{n}",
                "task_id": f"task{i}", "day": when[:10], "start_ns": _ns(when),
                "end_ns": _ns(when) + 10**9, "attempt": n, "model": "m", "tier": tier,
                "variant": variant, "input_tokens": inp, "output_tokens": out,
                "cached_input_tokens": cached, "cache": "prefix" if cached else "miss",
                "policy_version": "1", "cost_usd": float("nan")}

    tasks = [task(1, "payments", "expr_eval", "2026-11-30T22:05:00"),
             task(2, "search", "list_ops", "2026-11-30T23:10:00", verifier=0.002),
             task(3, "payments", "expr_eval", "2026-12-01T00:20:00")]
    attempts = [attempt(1, 1, "S", "bf16", "2026-11-30T22:05:00"),
                attempt(1, 2, "L", "bf16", "2026-11-30T22:30:00"),
                attempt(2, 1, "L", "api", "2026-11-30T23:10:00"),
                attempt(3, 1, "S", "bf16", "2026-12-01T00:20:00", purpose="gate", cost=0.01)]
    calls = [call(1, 1, "S", "bf16", "2026-11-30T22:05:00", 2000, 500, cached=1000),
             call(1, 2, "L", "bf16", "2026-11-30T22:30:00", 1000, 500),
             call(2, 1, "L", "api", "2026-11-30T23:10:00", 10_000, 1000)]
    return _table("tasks", tasks), _table("attempts", attempts), _table("calls", calls)


def test_every_mandatory_column_is_there_and_the_rows_keep_the_spec():
    frame = build_focus(*window(), FLEET)
    assert FOCUS_11_MANDATORY <= set(frame.columns)
    assert NAMED <= set(frame.columns)
    assert check_focus(frame) == []
    for column in FOCUS_11_NOT_NULL:
        assert frame[column].notna().all(), column
    assert set(frame["ChargeCategory"]) == {"Usage"} and frame["ChargeClass"].isna().all()
    assert set(frame["ChargeFrequency"]) == {"Usage-Based"}
    assert set(frame["BillingCurrency"]) == {"USD"}
    assert set(frame["BillingAccountId"]) == {"test-fleet"}
    # FOCUS columns first, then the custom ones, all prefixed x_.
    assert list(frame.columns) == [*FOCUS_COLUMNS, *CUSTOM_COLUMNS]
    assert all(c.startswith("x_") for c in CUSTOM_COLUMNS)


def test_billed_cost_adds_up_to_the_metrics_spend_and_list_cost_drops_the_cache():
    tasks, attempts, calls = window()
    frame = build_focus(tasks, attempts, calls, FLEET)
    total = compute_metrics(tasks, attempts, calls, FLEET)["spend_total"].iloc[0]
    assert frame["BilledCost"].sum() == pytest.approx(total)
    assert (frame["EffectiveCost"] == frame["BilledCost"]).all()
    s_row = frame[frame["SkuId"] == "S:bf16"].iloc[0]
    # 1000 uncached + 1000 cached input tokens at $1e-6 (cached: 90% off) + 500 out at $2e-6.
    assert s_row["BilledCost"] == pytest.approx(0.001 + 0.0001 + 0.001)
    assert s_row["ListCost"] == pytest.approx(0.002 + 0.001)
    assert s_row["ConsumedQuantity"] == 2500 and s_row["ConsumedUnit"] == "Tokens"
    assert s_row["PricingQuantity"] == pytest.approx(2.5) and s_row["PricingUnit"] == "1000 Tokens"


def test_charge_periods_are_hours_inside_their_month():
    frame = build_focus(*window(), FLEET)
    start, end = frame["ChargePeriodStart"], frame["ChargePeriodEnd"]
    assert ((end - start) == pd.Timedelta(hours=1)).all()
    assert (start.dt.minute == 0).all()
    december = frame[start >= pd.Timestamp("2026-12-01T00:00Z")]
    assert len(december) == 1 and december["BilledCost"].iloc[0] == pytest.approx(0.01)
    assert december["BillingPeriodStart"].iloc[0] == pd.Timestamp("2026-12-01T00:00Z")
    assert december["BillingPeriodEnd"].iloc[0] == pd.Timestamp("2027-01-01T00:00Z")
    november = frame[start < pd.Timestamp("2026-12-01T00:00Z")]
    assert set(november["BillingPeriodEnd"]) == {pd.Timestamp("2026-12-01T00:00Z")}
    # The gate attempt had an explicit cost and no calls: counted in requests, not tokens.
    assert december["ConsumedUnit"].iloc[0] == "Requests"


def test_tags_carry_team_repo_family_and_tier_and_resources_are_named():
    frame = build_focus(*window(), FLEET)
    tags = [json.loads(t) for t in frame["Tags"]]
    assert all({"team", "repo", "family", "autopilot/tier"} <= set(t) for t in tags)
    api = frame[frame["SkuId"] == "L:api"].iloc[0]
    assert json.loads(api["Tags"])["team"] == "search"
    assert (api["SubAccountId"], api["ResourceId"]) == ("search", "test-fleet/L/api")
    assert api["ResourceType"] == "LLM API model" and api["ProviderName"] == "External API"
    spot = frame[frame["SkuId"] == "L:bf16"].iloc[0]
    assert spot["PricingCategory"] == "Dynamic" and spot["ProviderName"] == "Self-hosted"
    verifier = frame[frame["ResourceType"] == "Verifier"].iloc[0]
    assert verifier["BilledCost"] == pytest.approx(0.002)
    assert verifier["ServiceCategory"] == "Developer Tools"
    assert set(frame["ServiceCategory"]) <= {"AI and Machine Learning", "Developer Tools"}


def test_csv_dates_are_written_the_specs_way_and_the_account_is_configurable():
    frame = build_focus(*window(), FLEET, account=FocusAccount(
        billing_account_id="acme-ml", region_id="eu-west-1", region_name="EU (Ireland)"))
    text = focus_csv_frame(frame)
    pattern = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
    for column in ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart",
                   "BillingPeriodEnd"):
        assert text[column].map(lambda v: bool(pattern.match(v))).all(), column
    assert set(frame["BillingAccountId"]) == {"acme-ml"} and set(frame["RegionId"]) == {
        "eu-west-1"}


def test_check_focus_names_what_breaks_the_spec():
    frame = build_focus(*window(), FLEET)
    broken = frame.drop(columns=["BilledCost"]).assign(Colour="red")
    broken.loc[0, "ChargeCategory"] = "Spend"
    broken.loc[1, "ServiceName"] = None
    problems = check_focus(broken)
    assert "missing column BilledCost" in problems
    assert "custom column Colour is not prefixed x_" in problems
    assert any(p.startswith("ChargeCategory has values outside the spec") for p in problems)
    assert "ServiceName has nulls" in problems


def test_an_empty_window_has_the_columns_and_no_rows():
    tasks, attempts, calls = window()
    frame = build_focus(tasks.iloc[:0], attempts.iloc[:0], calls.iloc[:0], FLEET)
    assert frame.empty and FOCUS_11_MANDATORY <= set(frame.columns)
    assert check_focus(frame) == []
