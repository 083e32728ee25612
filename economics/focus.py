"""Cost export in FOCUS 1.1 (the FinOps Foundation's open cost and usage format).

One row per charge period (an hour, UTC) per resource (a tier variant, or verifier compute)
per team, repo, family and purpose, built from the spend lines (``economics.spend``: the
one pricing function's charges), so the export's BilledCost adds up to the metrics' spend.

Mapping (FOCUS column: what the autopilot writes):
- BilledCost, EffectiveCost, ContractedCost: the charge (showback: nothing is amortised and
  the manifest's prices, cache discounts included, are the contracted rate).
- ListCost: the same tokens at the manifest's list prices with no cache discount (an explicit
  cost in the telemetry is its own list cost).
- ChargePeriodStart/End: the hour; BillingPeriodStart/End: its calendar month (UTC).
- ChargeCategory ``Usage``, ChargeClass null (no corrections), ChargeFrequency
  ``Usage-Based``, PricingCategory ``Standard`` (``Dynamic`` on spot capacity).
- ConsumedQuantity/Unit: tokens (input + output) in ``Tokens``; PricingQuantity/Unit: the
  same in ``1000 Tokens``. A row without tokens (an explicitly costed attempt without
  calls) counts ``Requests``; verifier compute counts ``Tasks``.
- ResourceId ``<fleet>/<tier>/<variant>``, ResourceName, ResourceType, SkuId
  ``<tier>:<variant>``; SubAccountId/Name: the team; ServiceCategory ``AI and Machine
  Learning`` / ``Generative AI`` (verifier compute: ``Developer Tools`` / ``Quality
  Assurance``).
- Tags (JSON, key-value): the user-defined ``team``, ``repo``, ``family``, and the
  provider-defined ``autopilot/tier``, ``autopilot/variant``, ``autopilot/purpose``
  (provider-defined tags carry the provider's prefix, as the spec requires).
- Custom columns after the FOCUS ones, prefixed ``x_``: tokens by kind, calls, attempts.

Timestamps are tz-aware UTC in the frame; ``focus_csv_frame`` formats them the spec's way
(``YYYY-MM-DDTHH:mm:ssZ``). ``check_focus`` tests a frame against the spec's rules this
module relies on (the 1.1 mandatory columns, their nulls and allowed values).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from economics.costmodel import UNKNOWN_LABEL
from economics.spend import VERIFIER_LABEL, spend_lines

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "CHARGE_CATEGORIES",
    "CONDITIONAL_COLUMNS",
    "CUSTOM_COLUMNS",
    "FOCUS_COLUMNS",
    "FOCUS_VERSION",
    "MANDATORY_COLUMNS",
    "NOT_NULL_COLUMNS",
    "RECOMMENDED_COLUMNS",
    "SERVICE_CATEGORIES",
    "FocusAccount",
    "build_focus",
    "check_focus",
    "focus_csv_frame",
    "focus_rows",
]

FOCUS_VERSION = "1.1"
# The FOCUS 1.1 columns whose feature level is Mandatory (specification/columns/*.md).
MANDATORY_COLUMNS: tuple[str, ...] = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass",
    "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)
# Conditional columns that apply here (usage is measured, resources and sub-accounts exist,
# tags are set, pricing has more than one category); regions apply when one is configured.
CONDITIONAL_COLUMNS: tuple[str, ...] = (
    "ConsumedQuantity", "ConsumedUnit", "PricingCategory", "RegionId", "RegionName",
    "ResourceId", "ResourceName", "ResourceType", "SkuId", "SubAccountId", "SubAccountName",
    "Tags",
)
RECOMMENDED_COLUMNS: tuple[str, ...] = ("ChargeFrequency", "ServiceSubcategory")
FOCUS_COLUMNS: tuple[str, ...] = tuple(sorted(
    (*MANDATORY_COLUMNS, *CONDITIONAL_COLUMNS, *RECOMMENDED_COLUMNS)))
CUSTOM_COLUMNS: tuple[str, ...] = (
    "x_InputTokens", "x_CachedInputTokens", "x_OutputTokens", "x_Calls", "x_Attempts",
    "x_Tasks",
)
# Columns the spec says MUST NOT be null (1.1 "Allows nulls: False"), of those written here;
# PricingQuantity/PricingUnit/ConsumedQuantity/ConsumedUnit are non-null for Usage rows.
NOT_NULL_COLUMNS: tuple[str, ...] = (
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "ProviderName", "PublisherName", "ServiceCategory", "ServiceName", "ServiceSubcategory",
    "PricingQuantity", "PricingUnit", "ConsumedQuantity", "ConsumedUnit", "PricingCategory",
)
CHARGE_CATEGORIES = ("Usage", "Purchase", "Tax", "Credit", "Adjustment")
CHARGE_FREQUENCIES = ("One-Time", "Recurring", "Usage-Based")
PRICING_CATEGORIES = ("Standard", "Dynamic", "Committed", "Other")
SERVICE_CATEGORIES = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
    "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
    "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
    "Storage", "Web", "Other",
)
_DATE_COLUMNS = ("BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd",
                 "ChargePeriodStart")
_COST_COLUMNS = ("BilledCost", "EffectiveCost", "ContractedCost", "ListCost")
TAG_PREFIX = "autopilot/"
_GROUP = ("hour", "team", "repo", "family", "tier", "variant", "purpose")


@dataclass(frozen=True)
class FocusAccount:
    """Who bills whom. Defaults: an internal showback of a self-hosted fleet, the billing
    account named after the fleet manifest."""

    billing_account_id: str | None = None  # None: the fleet's metadata name
    billing_account_name: str | None = None
    provider_name: str = "Self-hosted"
    api_provider_name: str = "External API"  # for API-priced variants
    invoice_issuer_name: str = "Internal showback"
    billing_currency: str = "USD"
    service_name: str = "LLM inference"
    verifier_service_name: str = "Verifier compute"
    region_id: str | None = None
    region_name: str | None = None


def _variant_facts(fleet: FleetManifest) -> dict[tuple[str, str], tuple[bool, str | None, str]]:
    """(tier, variant) -> (API-priced, capacity type, model) of the manifest."""
    out = {}
    for tier in fleet.tiers:
        for v in tier.variants:
            e = v.economics
            out[(tier.name, v.name)] = (e.api_priced, None if e.api_priced
                                        else str(e.capacity_type), tier.model)
    return out


def focus_rows(lines: pd.DataFrame, fleet: FleetManifest,
               account: FocusAccount | None = None) -> pd.DataFrame:
    """The FOCUS rows of spend lines (``spend_lines``): ``FOCUS_COLUMNS`` then
    ``CUSTOM_COLUMNS``."""
    account = account or FocusAccount()
    columns = [*FOCUS_COLUMNS, *CUSTOM_COLUMNS]
    if lines.empty:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})
    frame = lines.assign(hour=pd.to_datetime(lines["start_ns"].to_numpy(dtype=np.int64),
                                             unit="ns", utc=True).floor("h"))
    keys = list(_GROUP)
    for key in keys[1:]:
        frame[key] = frame[key].astype("object").where(frame[key].notna(), UNKNOWN_LABEL)
    sums = frame.groupby(keys, sort=True, dropna=False).agg(
        usd=("usd", "sum"), list_usd=("list_usd", "sum"), input_tokens=("input_tokens", "sum"),
        cached_input_tokens=("cached_input_tokens", "sum"),
        output_tokens=("output_tokens", "sum"), calls=("calls", "sum"),
        attempts=("attempts", "sum"), tasks=("tasks", "sum")).reset_index()

    facts = _variant_facts(fleet)
    fleet_name = fleet.metadata.name
    account_id = account.billing_account_id or fleet_name
    n = len(sums)
    hour = pd.DatetimeIndex(sums["hour"])
    month = hour.tz_localize(None).to_period("M")
    billing_start = month.to_timestamp().tz_localize("UTC")
    billing_end = (month + 1).to_timestamp().tz_localize("UTC")
    verifier = (sums["tier"] == VERIFIER_LABEL).to_numpy()
    tokens = (sums["input_tokens"] + sums["output_tokens"]).to_numpy(dtype=np.float64)
    with_tokens = tokens > 0

    api, pricing_category, provider, resource_type, description = [], [], [], [], []
    for tier, variant, purpose, is_verifier in zip(sums["tier"], sums["variant"],
                                                   sums["purpose"], verifier, strict=True):
        api_priced, capacity, model = facts.get((tier, variant), (False, None, None))
        api.append(api_priced)
        pricing_category.append("Dynamic" if capacity == "spot" else "Standard")
        provider.append(account.api_provider_name if api_priced else account.provider_name)
        if is_verifier:
            resource_type.append("Verifier")
            description.append("Verifier compute of the tasks' checks")
        else:
            resource_type.append("LLM API model" if api_priced else "LLM tier variant")
            shown = f"tier {tier} ({variant}" + (f", {model})" if model else ")")
            description.append(f"LLM tokens on {shown}, {purpose} attempts")
    tags = [json.dumps({"team": team, "repo": repo, "family": family,
                        f"{TAG_PREFIX}tier": tier, f"{TAG_PREFIX}variant": variant,
                        f"{TAG_PREFIX}purpose": purpose}, sort_keys=True)
            for team, repo, family, tier, variant, purpose in zip(
                sums["team"], sums["repo"], sums["family"], sums["tier"], sums["variant"],
                sums["purpose"], strict=True)]
    unit = np.where(verifier, "Tasks", np.where(with_tokens, "Tokens", "Requests"))
    consumed = np.where(verifier, sums["tasks"].to_numpy(dtype=np.float64),
                        np.where(with_tokens, tokens,
                                 np.maximum(sums["attempts"] + sums["calls"], 1)))
    pricing_unit = np.where(verifier, "Tasks",
                            np.where(with_tokens, "1000 Tokens", "Requests"))
    pricing_quantity = np.where(with_tokens & ~verifier, tokens / 1000.0, consumed)
    resource_id = [f"{fleet_name}/verifier" if v else f"{fleet_name}/{t}/{var}"
                   for t, var, v in zip(sums["tier"], sums["variant"], verifier, strict=True)]
    resource_name = ["verifier compute" if v else f"tier {t} {var}"
                     for t, var, v in zip(sums["tier"], sums["variant"], verifier, strict=True)]
    cost = sums["usd"].to_numpy(dtype=np.float64)
    out = pd.DataFrame({
        "BilledCost": cost,
        "BillingAccountId": account_id,
        "BillingAccountName": account.billing_account_name or account_id,
        "BillingCurrency": account.billing_currency,
        "BillingPeriodEnd": billing_end,
        "BillingPeriodStart": billing_start,
        "ChargeCategory": "Usage",
        "ChargeClass": pd.Series([None] * n, dtype="object"),
        "ChargeDescription": description,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": hour + pd.Timedelta(hours=1),
        "ChargePeriodStart": hour,
        "ConsumedQuantity": consumed,
        "ConsumedUnit": unit,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": account.invoice_issuer_name,
        "ListCost": np.maximum(sums["list_usd"].to_numpy(dtype=np.float64), cost),
        "PricingCategory": pricing_category,
        "PricingQuantity": pricing_quantity,
        "PricingUnit": pricing_unit,
        "ProviderName": provider,
        "PublisherName": provider,
        "RegionId": account.region_id,
        "RegionName": account.region_name,
        "ResourceId": resource_id,
        "ResourceName": resource_name,
        "ResourceType": resource_type,
        "ServiceCategory": np.where(verifier, "Developer Tools", "AI and Machine Learning"),
        "ServiceName": np.where(verifier, account.verifier_service_name,
                                account.service_name),
        "ServiceSubcategory": np.where(verifier, "Quality Assurance", "Generative AI"),
        "SkuId": [f"{t}:{var}" for t, var in zip(sums["tier"], sums["variant"], strict=True)],
        "SubAccountId": sums["team"].to_numpy(dtype=object),
        "SubAccountName": sums["team"].to_numpy(dtype=object),
        "Tags": tags,
        "x_InputTokens": sums["input_tokens"].to_numpy(dtype=np.int64),
        "x_CachedInputTokens": sums["cached_input_tokens"].to_numpy(dtype=np.int64),
        "x_OutputTokens": sums["output_tokens"].to_numpy(dtype=np.int64),
        "x_Calls": sums["calls"].to_numpy(dtype=np.int64),
        "x_Attempts": sums["attempts"].to_numpy(dtype=np.int64),
        "x_Tasks": sums["tasks"].to_numpy(dtype=np.int64),
    })
    for name in ("RegionId", "RegionName"):
        out[name] = out[name].astype("object")
    return out[columns]


def build_focus(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                fleet: FleetManifest, *, account: FocusAccount | None = None,
                default_verifier_cost_usd: float = 0.0) -> pd.DataFrame:
    """Price the window and lay it out as FOCUS rows (module docstring)."""
    lines = spend_lines(tasks, attempts, calls, fleet,
                        default_verifier_cost_usd=default_verifier_cost_usd)
    return focus_rows(lines, fleet, account)


def focus_csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its date/time columns as the spec's text (``YYYY-MM-DDTHH:mm:ssZ``)."""
    out = frame.copy()
    for name in _DATE_COLUMNS:
        if name in out.columns and len(out):
            out[name] = pd.DatetimeIndex(out[name]).tz_convert("UTC").strftime(
                "%Y-%m-%dT%H:%M:%SZ")
    return out


def check_focus(frame: pd.DataFrame,
                required: Sequence[str] = MANDATORY_COLUMNS) -> list[str]:
    """Problems of a FOCUS frame against the rules this export claims (empty: none).

    Every ``required`` column present; the non-null columns without nulls; allowed values of
    ChargeCategory, ChargeFrequency, PricingCategory and ServiceCategory; costs non-negative
    and ListCost >= EffectiveCost; ChargePeriodEnd after ChargePeriodStart and inside the
    billing period; Tags a JSON object; custom columns prefixed ``x_``.
    """
    problems = [f"missing column {c}" for c in required if c not in frame.columns]
    for column in frame.columns:
        if column not in FOCUS_COLUMNS and column not in MANDATORY_COLUMNS \
                and not column.startswith("x_"):
            problems.append(f"custom column {column} is not prefixed x_")
    if frame.empty:
        return problems
    for column in NOT_NULL_COLUMNS:
        if column in frame.columns and frame[column].isna().any():
            problems.append(f"{column} has nulls")
    allowed = {"ChargeCategory": CHARGE_CATEGORIES, "ChargeFrequency": CHARGE_FREQUENCIES,
               "PricingCategory": PRICING_CATEGORIES, "ServiceCategory": SERVICE_CATEGORIES}
    for column, values in allowed.items():
        if column in frame.columns:
            bad = sorted(set(frame[column].dropna()) - set(values))
            if bad:
                problems.append(f"{column} has values outside the spec: {bad}")
    for column in _COST_COLUMNS:
        if column in frame.columns and (frame[column] < 0).any():
            problems.append(f"{column} is negative")
    if {"ListCost", "EffectiveCost"} <= set(frame.columns) and \
            (frame["ListCost"] + 1e-12 < frame["EffectiveCost"]).any():
        problems.append("ListCost is below EffectiveCost")
    if set(_DATE_COLUMNS) <= set(frame.columns):
        start, end = frame["ChargePeriodStart"], frame["ChargePeriodEnd"]
        if not (end > start).all():
            problems.append("ChargePeriodEnd is not after ChargePeriodStart")
        if not ((frame["BillingPeriodStart"] <= start) & (end <= frame["BillingPeriodEnd"])).all():
            problems.append("a charge period falls outside its billing period")
    if "Tags" in frame.columns:
        for text in frame["Tags"].dropna():
            if not isinstance(json.loads(text), dict):
                problems.append("Tags is not a JSON object")
                break
    return problems
