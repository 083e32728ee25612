"""The cost model: what every call, attempt and task cost, and what a Green PR costs.

Pure functions over the three telemetry tables (``contracts.tables``) and a
fleet manifest; no I/O. Everything is vectorised with numpy so that the metrics over a
million tasks stay within seconds.

Pricing rules (DESIGN.md, "Fleet manifest" and "Telemetry"). ``price_attempts`` is the one
function that prices spans; ``metrics``, the FinOps register and the estimator's window
(``experiments.window``) all read it, so a span costs the same everywhere:

- A call pays its uncached input tokens at the input price, its prefix-cached input tokens
  at the cached input price and its output tokens at the output price of its tier and
  variant, plus the variant's per-request price (API-priced variants). Self-hosted
  variants derive the prices from GPUs and throughput, the cached price being
  ``input price * (1 - cached_input_discount)``; API-priced variants carry list prices
  (``contracts.manifest.Economics``). A call served from the response cache pays
  ``response_cache_usd_per_call`` only.
- An explicit ``cost_usd`` overrides the cost model everywhere (``charge``): on a call it
  is the call's cost; on an attempt it is the attempt's cost, whatever its calls (with or
  without call spans) would have cost. An attempt without an explicit cost costs the sum
  of its calls (each priced by the rule above; an attempt with neither costs 0).
- A variant the manifest does not list falls back to its tier's default variant; a tier
  the manifest does not list prices at 0 and is counted in ``Unpriced`` (never raises).
- Task spend = serve + shadow + gate attempts (failed attempts and repair loops included)
  + verifier compute. Cost per Green PR = all of it / Green PRs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from contracts.spans import CacheStatus, Outcome, Purpose

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "PURPOSES",
    "UNKNOWN_LABEL",
    "CostLedger",
    "CostPerGreenPR",
    "PricedAttempts",
    "PricedCalls",
    "ReservationView",
    "TokenUsage",
    "UnitEconomics",
    "Unpriced",
    "attempt_costs",
    "build_ledger",
    "charge",
    "cost_decomposition",
    "cost_per_green_pr",
    "escape_rate",
    "first_pass_yield",
    "fleet_variants",
    "green_pr_mask",
    "price_attempts",
    "price_calls",
    "reservation_view",
    "review_escapes",
    "spot_share",
    "task_spend",
    "tier_prices",
    "unit_economics",
    "usd_per_1k_tokens",
    "window_hours",
]

UNKNOWN_LABEL = "(unknown)"
# Attempt purposes in code order; an attempt with no (or an unknown) purpose counts as serve
# because that is what the gateway does with an untagged attempt.
PURPOSES: tuple[str, ...] = (str(Purpose.SERVE), str(Purpose.SHADOW), str(Purpose.GATE))
_SERVE, _SHADOW, _GATE = 0, 1, 2


# ----------------------------------------------------------------------------- helpers
def _floats(series: pd.Series, fill: float = 0.0) -> np.ndarray:
    return series.to_numpy(dtype=np.float64, na_value=fill)


def _ints(series: pd.Series, fill: int = 0) -> np.ndarray:
    return series.to_numpy(dtype=np.int64, na_value=fill)


def _bools(series: pd.Series, fill: bool = False) -> np.ndarray:
    return series.to_numpy(dtype=bool, na_value=fill)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-NA where a hand-built frame lacks it (e.g. no ``cost_usd``)."""
    if name in frame.columns:
        return frame[name]
    return pd.Series(pd.NA, index=frame.index, dtype="object")


def _equals(series: pd.Series, value: str) -> np.ndarray:
    """Vectorised ``series == value`` with NA as False (string dtypes compare without copies)."""
    return (series == value).to_numpy(dtype=bool, na_value=False)


def _codes_into(series: pd.Series, labels: Sequence[str]) -> np.ndarray:
    """Position of each value in ``labels``; -1 for NA or a value not listed."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    position = {label: i for i, label in enumerate(labels)}
    # The trailing -1 is what code -1 (NA) indexes.
    lookup = np.array([position.get(u, -1) for u in uniques] + [-1], dtype=np.int64)
    return lookup[codes]


def _bincount(codes: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    if weights is None:
        return np.bincount(codes, minlength=size).astype(np.int64)
    return np.bincount(codes, weights=weights, minlength=size)


def _tier_labels(fleet: FleetManifest, *observed: pd.Series) -> list[str]:
    """Fleet tiers by rank, then any tier seen in telemetry that the manifest lacks."""
    labels = list(fleet.tier_names)
    known = set(labels)
    extra: set[str] = set()
    for series in observed:
        extra.update(str(u) for u in pd.unique(series.dropna()) if str(u) not in known)
    return labels + sorted(extra)


# ------------------------------------------------------------------------ unit prices
def usd_per_1k_tokens(gpus: float, usd_per_gpu_hour: float, tokens_per_s: float) -> float:
    """Price of 1,000 tokens on a replica that holds ``gpus`` and serves ``tokens_per_s``."""
    return gpus * usd_per_gpu_hour / 3600.0 / tokens_per_s * 1000.0


def tier_prices(fleet: FleetManifest) -> pd.DataFrame:
    """One row per tier and variant: rank, whether it is the default, its pricing form
    (``self_hosted`` or ``api``), $/1k input, cached input and output, $ per request."""
    discount = fleet.spec.pricing.cached_input_discount
    rows = []
    for tier in fleet.tiers:
        default = tier.variant().name
        for variant in tier.variants:
            e = variant.economics
            rows.append({
                "tier": tier.name,
                "variant": variant.name,
                "rank": tier.rank,
                "is_default": variant.name == default,
                "pricing": "api" if e.api_priced else "self_hosted",
                "usd_per_1k_input": e.usd_per_input_token * 1000.0,
                "usd_per_1k_cached_input": e.usd_per_cached_input_token(discount) * 1000.0,
                "usd_per_1k_output": e.usd_per_output_token * 1000.0,
                "usd_per_request": e.usd_per_call,
                "gpus": e.gpus_per_replica,
                "replicas": 0 if e.api_priced else e.replicas,
                "capacity_type": None if e.api_priced else str(e.capacity_type),
            })
    return pd.DataFrame(rows)


def fleet_variants(fleet: FleetManifest) -> list[tuple[str, str]]:
    """Every (tier, variant) of the manifest, tiers by rank."""
    return [(t.name, v.name) for t in fleet.tiers for v in t.variants]


# ---------------------------------------------------------------------- call pricing
@dataclass(frozen=True)
class Unpriced:
    """Telemetry the manifest could not price exactly (reported, never raised).

    ``calls``: calls priced at 0 because their tier is not in the manifest (and they carry
    no explicit cost); ``tiers``: those calls per unknown tier; ``variant_fallbacks``: calls
    priced at their tier's default variant because their variant is unknown or absent,
    keyed ``"tier/variant"``.
    """

    calls: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    variant_fallbacks: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"calls": self.calls, "tiers": dict(self.tiers),
                "variant_fallbacks": dict(self.variant_fallbacks)}


@dataclass(frozen=True)
class PricedCalls:
    """Per-call arrays aligned with the calls frame's rows, plus the unpriced diagnostic.

    ``cost_usd`` is what the call is charged (explicit cost if given, else the model's);
    ``model_cost_usd`` is the manifest's price; ``uncached_cost_usd`` is what the same tokens
    would have cost with no cache; ``cache_savings_usd`` is the difference for calls the
    model priced (0 for explicitly costed or unpriced calls).
    """

    cost_usd: np.ndarray
    model_cost_usd: np.ndarray
    uncached_cost_usd: np.ndarray
    cache_savings_usd: np.ndarray
    explicit: np.ndarray
    priced: np.ndarray
    response_hit: np.ndarray
    cache_hit: np.ndarray
    input_tokens: np.ndarray
    cached_input_tokens: np.ndarray
    output_tokens: np.ndarray
    busy_gpu_seconds: np.ndarray
    input_price: np.ndarray  # $ per uncached input token of the variant that priced it
    cached_input_price: np.ndarray  # $ per prefix-cached input token
    tier_code: np.ndarray
    tier_labels: list[str]
    fleet_variant: np.ndarray  # index into fleet_variants of the variant that priced it; -1 none
    fleet_variants: list[tuple[str, str]]
    unpriced: Unpriced

    def frame(self, index: pd.Index | None = None) -> pd.DataFrame:
        return pd.DataFrame({
            "cost_usd": self.cost_usd,
            "model_cost_usd": self.model_cost_usd,
            "uncached_cost_usd": self.uncached_cost_usd,
            "cache_savings_usd": self.cache_savings_usd,
            "explicit": self.explicit,
            "priced": self.priced,
            "busy_gpu_seconds": self.busy_gpu_seconds,
        }, index=index)


def charge(explicit_usd: np.ndarray, model_usd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a span (call or attempt) is charged: its explicit cost where it carries one
    (not NaN), else the cost model's. Returns the charges and the explicit mask. The one
    statement of "an explicit cost overrides the cost model" for every reader."""
    explicit = ~np.isnan(explicit_usd)
    return np.where(explicit, explicit_usd, model_usd), explicit


def price_calls(calls: pd.DataFrame, fleet: FleetManifest,
                tier_labels: Sequence[str] | None = None) -> PricedCalls:
    """Price every call (see the module docstring for the rules)."""
    pricing = fleet.spec.pricing
    labels = list(tier_labels) if tier_labels is not None else _tier_labels(fleet, calls["tier"])

    tier_codes, tier_uniques = pd.factorize(calls["tier"], use_na_sentinel=True)
    var_codes, var_uniques = pd.factorize(calls["variant"], use_na_sentinel=True)
    n_t, n_v = len(tier_uniques), len(var_uniques)
    # Prices are resolved once per observed (tier, variant) pair, then gathered per call.
    # The extra last row/column stands for an absent tier/variant (the NA code).
    shape = (n_t + 1, n_v + 1)
    p_in, p_out, p_cached, p_call = (np.zeros(shape) for _ in range(4))
    s_per_in, s_per_out, gpus = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    known = np.zeros(shape, dtype=bool)
    fallback = np.zeros(shape, dtype=bool)
    resolved = np.full(shape, -1, dtype=np.int64)
    flat = fleet_variants(fleet)
    flat_index = {pair: k for k, pair in enumerate(flat)}
    tier_by_name = {t.name: t for t in fleet.spec.tiers}
    variant_names: list[str | None] = [str(v) for v in var_uniques] + [None]
    for i, tier_name in enumerate(tier_uniques):
        tier = tier_by_name.get(str(tier_name))
        if tier is None:
            continue
        listed = {v.name: v for v in tier.variants}
        for j, variant_name in enumerate(variant_names):
            variant = listed.get(variant_name) if variant_name is not None else None
            if variant is None:
                variant = tier.variant()
                fallback[i, j] = True
            e = variant.economics
            p_in[i, j], p_out[i, j] = e.usd_per_input_token, e.usd_per_output_token
            p_cached[i, j] = e.usd_per_cached_input_token(pricing.cached_input_discount)
            p_call[i, j] = e.usd_per_call
            s_per_in[i, j] = e.seconds_per_input_token
            s_per_out[i, j] = e.seconds_per_output_token
            gpus[i, j] = e.gpus_per_replica
            known[i, j] = True
            resolved[i, j] = flat_index[(tier.name, variant.name)]

    # One flat gather index per call.
    cell = (np.where(tier_codes < 0, n_t, tier_codes) * (n_v + 1)
            + np.where(var_codes < 0, n_v, var_codes))
    p_in, p_out, known, fallback = p_in.ravel(), p_out.ravel(), known.ravel(), fallback.ravel()
    p_cached, p_call = p_cached.ravel(), p_call.ravel()
    s_per_in, s_per_out, gpus, resolved = (
        s_per_in.ravel(), s_per_out.ravel(), gpus.ravel(), resolved.ravel())
    inp = _floats(calls["input_tokens"])
    out = _floats(calls["output_tokens"])
    cached = np.clip(_floats(calls["cached_input_tokens"]), 0.0, inp)
    cache = calls["cache"]
    response_hit = _equals(cache, str(CacheStatus.RESPONSE))
    cache_hit = ~_equals(cache, str(CacheStatus.MISS)) & cache.notna().to_numpy()

    call_p_in, call_p_out, call_known = p_in[cell], p_out[cell], known[cell]
    per_request = p_call[cell]
    uncached_cost = inp * call_p_in + out * call_p_out + per_request
    token_cost = ((inp - cached) * call_p_in + cached * p_cached[cell] + out * call_p_out
                  + per_request)
    model_cost = np.where(response_hit, pricing.response_cache_usd_per_call, token_cost)

    cost, explicit = charge(_floats(_column(calls, "cost_usd"), np.nan), model_cost)
    savings = np.where(explicit | ~call_known, 0.0, uncached_cost - model_cost)
    # A response hit occupies no GPU; a prefix hit skips the prefill of its cached tokens.
    busy = np.where(response_hit, 0.0,
                    ((inp - cached) * s_per_in[cell] + out * s_per_out[cell]) * gpus[cell])

    unpriced_mask = ~call_known & ~explicit & ~response_hit
    unknown_tiers: dict[str, int] = {}
    if unpriced_mask.any():
        names = [str(u) for u in tier_uniques] + [UNKNOWN_LABEL]
        counts = pd.Series(tier_codes[unpriced_mask]).value_counts()
        unknown_tiers = {names[int(k)]: int(v) for k, v in counts.items()}
    fallbacks: dict[str, int] = {}
    fb_mask = fallback[cell]
    if fb_mask.any():
        per_cell = pd.Series(cell[fb_mask]).value_counts()
        for key, count in per_cell.items():
            i, j = divmod(int(key), n_v + 1)
            fallbacks[f"{tier_uniques[i]}/{variant_names[j]}"] = int(count)

    position = {label: k for k, label in enumerate(labels)}
    to_label = np.array([position.get(str(u), -1) for u in tier_uniques] + [-1], dtype=np.int64)
    label_codes = to_label[tier_codes]
    return PricedCalls(
        cost_usd=cost,
        model_cost_usd=np.where(call_known | response_hit, model_cost, 0.0),
        uncached_cost_usd=uncached_cost,
        cache_savings_usd=savings,
        explicit=explicit,
        priced=~unpriced_mask,
        response_hit=response_hit,
        cache_hit=cache_hit,
        input_tokens=inp,
        cached_input_tokens=cached,
        output_tokens=out,
        busy_gpu_seconds=busy,
        input_price=np.where(call_known, call_p_in, 0.0),
        cached_input_price=np.where(call_known, p_cached[cell], 0.0),
        tier_code=label_codes,
        tier_labels=labels,
        fleet_variant=resolved[cell],
        fleet_variants=flat,
        unpriced=Unpriced(calls=int(unpriced_mask.sum()), tiers=unknown_tiers,
                          variant_fallbacks=fallbacks),
    )


# -------------------------------------------------------------------------- the ledger
@dataclass(frozen=True)
class CostLedger:
    """The window's spend, linked call -> attempt -> task, as numpy arrays.

    Tasks are indexed by a code over every task id seen in any table (``task_ids``);
    ``task_row`` is the row of that task in the tasks frame, -1 for spend whose task span
    is not in the window (an orphan). Calls link to attempts by (task id, attempt number),
    disambiguated by ``parent_span_id`` where two attempts share a number; calls with no
    attempt are ``orphan`` calls and count as serve spend.
    """

    task_ids: pd.Index
    task_row: np.ndarray
    calls: PricedCalls
    call_task: np.ndarray
    call_attempt: np.ndarray
    attempt_task: np.ndarray
    attempt_cost_usd: np.ndarray
    attempt_purpose: np.ndarray
    attempt_tier: np.ndarray
    attempt_passed: np.ndarray
    attempt_explicit: np.ndarray
    task_verifier_usd: np.ndarray
    task_has_serve: np.ndarray
    task_first_serve_passed: np.ndarray
    task_serve_attempts: np.ndarray
    tier_labels: list[str]
    duplicate_tasks: int = 0

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    @property
    def orphan_calls(self) -> np.ndarray:
        return self.call_attempt < 0

    def _by_task(self, mask: np.ndarray, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return _bincount(codes[mask], values[mask], self.n_tasks)

    def task_spend(self) -> dict[str, np.ndarray]:
        """Per task code: serve (orphan calls included), shadow, gate, eval, rework, verifier."""
        purpose, cost, task = self.attempt_purpose, self.attempt_cost_usd, self.attempt_task
        orphan = self.orphan_calls
        unlinked = self._by_task(orphan, self.calls.cost_usd, self.call_task)
        serve = self._by_task(purpose == _SERVE, cost, task) + unlinked
        shadow = self._by_task(purpose == _SHADOW, cost, task)
        gate = self._by_task(purpose == _GATE, cost, task)
        rework = self._by_task((purpose == _SERVE) & ~self.attempt_passed, cost, task)
        verifier = self.task_verifier_usd
        return {
            "spend_serve": serve,
            "spend_shadow": shadow,
            "spend_gate": gate,
            "spend_eval": shadow + gate,
            "spend_rework": rework,
            "spend_unlinked": unlinked,
            "spend_verifier": verifier,
            "spend_total": serve + shadow + gate + verifier,
        }

    def decomposition(self, green_prs: int) -> pd.DataFrame:
        """Spend by cost driver; rows with ``in_total`` partition the total exactly.

        Components: ``tokens`` (serve attempts that passed, per tier), ``rework`` (serve
        attempts that did not pass, per tier), ``unlinked`` (calls with no attempt),
        ``eval`` (shadow and gate), ``verifier``; and the memo ``cache_savings`` (what
        prefix and response cache hits saved against uncached prices, per call tier),
        which is not spend and so not in the total.
        """
        labels = self.tier_labels
        n_tiers = len(labels)
        # Unknown tier codes (-1) go to an extra trailing bucket.
        tier = np.where(self.attempt_tier < 0, n_tiers, self.attempt_tier)
        serve = self.attempt_purpose == _SERVE
        passed = self.attempt_passed
        cost = self.attempt_cost_usd
        tokens = _bincount(tier[serve & passed], cost[serve & passed], n_tiers + 1)
        rework = _bincount(tier[serve & ~passed], cost[serve & ~passed], n_tiers + 1)
        call_tier = np.where(self.calls.tier_code < 0, n_tiers, self.calls.tier_code)
        savings = _bincount(call_tier, self.calls.cache_savings_usd, n_tiers + 1)
        tier_names = [*labels, UNKNOWN_LABEL]
        rows: list[tuple[str, str | None, float, bool]] = []
        for i, name in enumerate(tier_names):
            if i < n_tiers or tokens[i] or rework[i]:
                rows.append(("tokens", name, float(tokens[i]), True))
                rows.append(("rework", name, float(rework[i]), True))
        rows.append(("unlinked", None, float(self.calls.cost_usd[self.orphan_calls].sum()), True))
        rows.append(("eval", str(Purpose.SHADOW),
                     float(cost[self.attempt_purpose == _SHADOW].sum()), True))
        rows.append(("eval", str(Purpose.GATE),
                     float(cost[self.attempt_purpose == _GATE].sum()), True))
        rows.append(("verifier", None, float(self.task_verifier_usd.sum()), True))
        for i, name in enumerate(tier_names):
            if i < n_tiers or savings[i]:
                rows.append(("cache_savings", name, float(savings[i]), False))
        frame = pd.DataFrame(rows, columns=["component", "detail", "usd", "in_total"])
        total = float(frame.loc[frame["in_total"], "usd"].sum())
        frame["per_green_pr"] = frame["usd"] / green_prs if green_prs > 0 else np.nan
        frame["share"] = frame["usd"] / total if total > 0 else np.nan
        return frame


def _task_codes(tasks: pd.DataFrame, attempts: pd.DataFrame,
                calls: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """One code per task id across the three tables (one hash pass over all ids)."""
    ids = pd.concat([tasks["task_id"], attempts["task_id"], calls["task_id"]],
                    ignore_index=True)
    codes, uniques = pd.factorize(ids, use_na_sentinel=True)
    n_u = len(uniques)
    if (codes < 0).any():  # a missing task id: one shared bucket, kept as spend
        codes = np.where(codes < 0, n_u, codes)
        uniques = pd.Index([*uniques, UNKNOWN_LABEL])
    else:
        uniques = pd.Index(uniques)
    a, b = len(tasks), len(tasks) + len(attempts)
    return uniques, codes[:a], codes[a:b], codes[b:]


def _first_rows(codes: np.ndarray, size: int) -> np.ndarray:
    """For each code, the first row holding it (-1 if none)."""
    first = np.full(size, -1, dtype=np.int64)
    rows = np.arange(len(codes), dtype=np.int64)
    # Reversed assignment leaves the first occurrence as the value written last.
    first[codes[::-1]] = rows[::-1]
    return first


def _link_calls(attempts: pd.DataFrame, calls: pd.DataFrame, attempt_task: np.ndarray,
                call_task: np.ndarray, att_number: np.ndarray,
                call_number: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attempt row of every call (-1 when none), and the attempts' order by (task, number)."""
    width = int(max(att_number.max(initial=0), call_number.max(initial=0))) + 2
    att_key = attempt_task * width + np.clip(att_number, 0, None)
    call_key = call_task * width + np.clip(call_number, 0, None)
    order = np.argsort(att_key, kind="stable")
    sorted_key = att_key[order]
    if len(calls) == 0 or len(attempts) == 0:
        return np.full(len(calls), -1, dtype=np.int64), order
    pos = np.minimum(np.searchsorted(sorted_key, call_key), len(sorted_key) - 1)
    hit = sorted_key[pos] == call_key
    row = np.where(hit, order[pos], -1)
    shared = np.zeros(len(sorted_key), dtype=bool)
    shared[1:] = sorted_key[1:] == sorted_key[:-1]
    shared[:-1] |= shared[1:]
    if shared.any():
        # Two attempts with one number (e.g. a shadow run numbered like a serve try): the
        # call's parent span decides, on that small subset only.
        ambiguous = hit & shared[pos]
        if ambiguous.any():
            rows_shared = order[shared]
            span_index = pd.Index(_column(attempts, "span_id").to_numpy(dtype=object)[rows_shared])
            parents = _column(calls, "parent_span_id").to_numpy(dtype=object)[ambiguous]
            if span_index.is_unique:
                found = span_index.get_indexer(parents)
                resolved = np.where(found >= 0, rows_shared[np.maximum(found, 0)], row[ambiguous])
                row[ambiguous] = resolved
    return row, order


@dataclass(frozen=True)
class PricedAttempts:
    """Every attempt priced (arrays aligned with the attempts frame's rows), its calls priced
    and linked to it. See ``price_attempts``.

    ``cost_usd`` is what the attempt is charged (``charge``: its explicit cost, else
    ``calls_usd``); ``calls_usd`` is the sum of its linked calls' charges; ``n_calls`` counts
    them; ``call_attempt`` is each call's attempt row (-1: no attempt span, an orphan call);
    ``order`` sorts the attempts by (task, attempt number).
    """

    cost_usd: np.ndarray
    explicit: np.ndarray
    calls_usd: np.ndarray
    n_calls: np.ndarray
    call_attempt: np.ndarray
    order: np.ndarray
    calls: PricedCalls

    @property
    def priced(self) -> np.ndarray:
        """Attempts whose cost the telemetry states: an explicit cost, or at least one call."""
        return self.explicit | (self.n_calls > 0)


def price_attempts(attempts: pd.DataFrame, calls: pd.DataFrame, fleet: FleetManifest, *,
                   tier_labels: Sequence[str] | None = None,
                   task_codes: tuple[np.ndarray, np.ndarray] | None = None) -> PricedAttempts:
    """Price every call and every attempt: the one pricing function of the product.

    A call costs its explicit cost, else the manifest's price of its tokens (``price_calls``);
    an attempt costs its explicit cost, else the sum of its calls. Calls link to attempts by
    (task id, attempt number), disambiguated by ``parent_span_id``. ``task_codes`` are the
    attempts' and calls' task codes where the caller has them (one code per task id).
    """
    if task_codes is None:
        ids = pd.concat([attempts["task_id"], calls["task_id"]], ignore_index=True)
        codes, uniques = pd.factorize(ids, use_na_sentinel=True)
        codes = np.where(codes < 0, len(uniques), codes)
        task_codes = (codes[:len(attempts)], codes[len(attempts):])
    a_codes, c_codes = task_codes
    labels = (list(tier_labels) if tier_labels is not None
              else _tier_labels(fleet, attempts["tier"], calls["tier"]))
    priced = price_calls(calls, fleet, tier_labels=labels)
    call_attempt, order = _link_calls(attempts, calls, a_codes, c_codes,
                                      _ints(attempts["attempt"]), _ints(calls["attempt"]))
    linked = call_attempt >= 0
    calls_usd = _bincount(call_attempt[linked], priced.cost_usd[linked], len(attempts))
    n_calls = _bincount(call_attempt[linked], None, len(attempts))
    cost, explicit = charge(_floats(_column(attempts, "cost_usd"), np.nan), calls_usd)
    return PricedAttempts(cost_usd=cost, explicit=explicit, calls_usd=calls_usd,
                          n_calls=n_calls, call_attempt=call_attempt, order=order,
                          calls=priced)


def build_ledger(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                 fleet: FleetManifest, *, default_verifier_cost_usd: float = 0.0) -> CostLedger:
    """Price and link the window's telemetry once; metrics and the functions below read it."""
    task_ids, t_codes, a_codes, c_codes = _task_codes(tasks, attempts, calls)
    n_u = len(task_ids)
    task_row = _first_rows(t_codes, n_u)
    duplicate_tasks = len(tasks) - int((task_row >= 0).sum())
    labels = _tier_labels(fleet, attempts["tier"], calls["tier"])

    spans = price_attempts(attempts, calls, fleet, tier_labels=labels,
                           task_codes=(a_codes, c_codes))
    priced, call_attempt, order = spans.calls, spans.call_attempt, spans.order
    attempt_cost, attempt_explicit = spans.cost_usd, spans.explicit

    purpose = _codes_into(attempts["purpose"], PURPOSES)
    purpose = np.where(purpose < 0, _SERVE, purpose)
    passed = _bools(attempts["passed"])
    att_tier = _codes_into(attempts["tier"], labels)

    # First serve attempt per task: walk attempts in (task, number) order, keep the first
    # serve row of each task.
    serve_order = order[purpose[order] == _SERVE]
    serve_tasks = a_codes[serve_order]
    first = np.ones(len(serve_order), dtype=bool)
    first[1:] = serve_tasks[1:] != serve_tasks[:-1]
    has_serve = np.zeros(n_u, dtype=bool)
    has_serve[serve_tasks] = True
    first_passed = np.zeros(n_u, dtype=bool)
    first_passed[serve_tasks[first]] = passed[serve_order[first]]
    serve_attempts = _bincount(serve_tasks, None, n_u)

    verifier = np.zeros(n_u)
    if len(tasks):
        per_row = _floats(tasks["verifier_cost_usd"], np.nan)
        per_row = np.where(np.isnan(per_row), default_verifier_cost_usd, per_row)
        known = task_row >= 0
        verifier[known] = per_row[task_row[known]]

    return CostLedger(
        task_ids=task_ids,
        task_row=task_row,
        calls=priced,
        call_task=c_codes,
        call_attempt=call_attempt,
        attempt_task=a_codes,
        attempt_cost_usd=attempt_cost,
        attempt_purpose=purpose,
        attempt_tier=att_tier,
        attempt_passed=passed,
        attempt_explicit=attempt_explicit,
        task_verifier_usd=verifier,
        task_has_serve=has_serve,
        task_first_serve_passed=first_passed,
        task_serve_attempts=serve_attempts,
        tier_labels=labels,
        duplicate_tasks=duplicate_tasks,
    )


def attempt_costs(attempts: pd.DataFrame, calls: pd.DataFrame,
                  fleet: FleetManifest) -> pd.Series:
    """Cost of every attempt (aligned with ``attempts``): its calls' sum, or its explicit cost."""
    empty_tasks = pd.DataFrame({"task_id": pd.Series([], dtype="string"),
                                "verifier_cost_usd": pd.Series([], dtype="float64")})
    ledger = build_ledger(empty_tasks, attempts, calls, fleet)
    return pd.Series(ledger.attempt_cost_usd, index=attempts.index, name="cost_usd")


def task_spend(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
               fleet: FleetManifest, *, default_verifier_cost_usd: float = 0.0) -> pd.DataFrame:
    """Spend per task id, split by purpose (every task id seen in any table is a row)."""
    ledger = build_ledger(tasks, attempts, calls, fleet,
                          default_verifier_cost_usd=default_verifier_cost_usd)
    frame = pd.DataFrame(ledger.task_spend(), index=ledger.task_ids)
    frame.index.name = "task_id"
    return frame


# ------------------------------------------------------------------ outcomes and yield
def green_pr_mask(tasks: pd.DataFrame) -> np.ndarray:
    """Green PR: outcome green, verifier passed, and review accepted where one is recorded."""
    green = _equals(tasks["outcome"], str(Outcome.GREEN))
    return green & _bools(tasks["verifier_passed"]) & _bools(tasks["review_accepted"], True)


def review_escapes(tasks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(reviewed, escaped) per task: a green or verifier-passed change the reviewer refused."""
    reviewed = tasks["review_accepted"].notna().to_numpy()
    refused = reviewed & ~_bools(tasks["review_accepted"], True)
    claimed = _equals(tasks["outcome"], str(Outcome.GREEN)) | _bools(tasks["verifier_passed"])
    return reviewed, refused & claimed


def escape_rate(tasks: pd.DataFrame) -> float | None:
    """Escaped changes over tasks with a recorded review; None when none was reviewed."""
    reviewed, escaped = review_escapes(tasks)
    n = int(reviewed.sum())
    return float(escaped.sum()) / n if n else None


def first_pass_yield(tasks: pd.DataFrame, attempts: pd.DataFrame) -> float | None:
    """Share of the tasks with a serve attempt whose first serve attempt passed the verifier."""
    ids = pd.Index(tasks["task_id"].dropna().unique())
    serve = attempts[_codes_into(attempts["purpose"], PURPOSES) <= _SERVE]
    serve = serve[serve["task_id"].isin(ids)]
    if serve.empty:
        return None
    first = serve.sort_values(["task_id", "attempt"], kind="stable").drop_duplicates("task_id")
    return float(_bools(first["passed"]).mean())


@dataclass(frozen=True)
class CostPerGreenPR:
    """Spend over Green PRs; ``value`` is None (and ``reason`` says why) when undefined."""

    value: float | None
    spend_usd: float
    green_prs: int
    reason: str | None = None


def cost_per_green_pr(spend_usd: float, green_prs: int) -> CostPerGreenPR:
    if spend_usd is None or not math.isfinite(spend_usd):
        return CostPerGreenPR(None, float("nan"), int(green_prs),
                              f"spend is not finite ({spend_usd})")
    if green_prs <= 0:
        return CostPerGreenPR(None, float(spend_usd), 0,
                              f"no Green PRs in the window (spend ${spend_usd:.4f})")
    return CostPerGreenPR(float(spend_usd) / green_prs, float(spend_usd), int(green_prs))


def cost_decomposition(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                       fleet: FleetManifest, *,
                       default_verifier_cost_usd: float = 0.0) -> pd.DataFrame:
    """Cost per Green PR by driver (see ``CostLedger.decomposition``)."""
    ledger = build_ledger(tasks, attempts, calls, fleet,
                          default_verifier_cost_usd=default_verifier_cost_usd)
    return ledger.decomposition(int(green_pr_mask(tasks).sum()))


# ------------------------------------------------------------------ planning economics
@dataclass(frozen=True)
class TokenUsage:
    """Tokens a typical task uses on one line item, at a price, on a share of tasks."""

    name: str
    tokens: float
    usd_per_1k: float
    share_of_tasks: float = 1.0

    @property
    def usd(self) -> float:
        return self.tokens / 1000.0 * self.usd_per_1k * self.share_of_tasks


@dataclass(frozen=True)
class UnitEconomics:
    """Planning view: per-task spend, and per Green PR at a first-pass yield.

    As in the cost-control practice, a task that misses first pass earns nothing, so the
    cost per Green PR is the per-task spend divided by FPY.
    """

    lines: tuple[tuple[str, float], ...]
    token_usd: float
    verifier_usd: float
    eval_usd: float
    per_task_usd: float
    fpy: float
    cost_per_green_pr: float | None
    reason: str | None = None


def unit_economics(usage: Sequence[TokenUsage], *, fpy: float, verifier_usd: float = 0.0,
                   eval_usd: float = 0.0) -> UnitEconomics:
    lines = tuple((u.name, u.usd) for u in usage)
    token_usd = sum(usd for _, usd in lines)
    per_task = token_usd + verifier_usd + eval_usd
    value: float | None = None
    reason = None
    if not (0.0 < fpy <= 1.0):
        reason = f"FPY must be in (0, 1] (got {fpy})"
    else:
        value = per_task / fpy
    return UnitEconomics(lines, token_usd, verifier_usd, eval_usd, per_task, fpy, value, reason)


# ------------------------------------------------------------------- reservation view
def window_hours(*frames: pd.DataFrame) -> float:
    """Hours a window covers: 24 per distinct ``day`` seen in any of the frames."""
    days: set[str] = set()
    for frame in frames:
        if len(frame):
            days.update(str(d) for d in pd.unique(frame["day"].dropna()))
    return 24.0 * len(days)


@dataclass(frozen=True)
class ReservationView:
    """Provisioned GPU time against the busy time the served tokens imply.

    ``by_variant`` has one row per tier and variant of the manifest; ``utilisation`` and
    ``idle_share`` are None when nothing is provisioned. Utilisation above 1 means the
    telemetry implies more work than the manifest's replicas could do (stale replicas).
    """

    by_variant: pd.DataFrame
    hours: float
    provisioned_gpu_hours: float
    busy_gpu_hours: float
    reservation_usd: float
    usage_usd: float
    utilisation: float | None
    idle_share: float | None
    spot_share: float | None


def spot_share(fleet: FleetManifest) -> float | None:
    """Share of provisioned spend (per hour) on spot capacity; None when none is provisioned."""
    total = spot = 0.0
    for tier in fleet.tiers:
        for variant in tier.variants:
            e = variant.economics
            total += e.usd_per_hour  # 0 for an API-priced variant
            if not e.api_priced and str(e.capacity_type) == "spot":
                spot += e.usd_per_hour
    return spot / total if total > 0 else None


def reservation_view(calls: pd.DataFrame, fleet: FleetManifest, *,
                     hours: float | None = None,
                     priced: PricedCalls | None = None) -> ReservationView:
    """GPU-hours provisioned (replicas * gpus * hours) vs busy GPU-hours of served tokens.

    Busy time of a call = (uncached input / prefill rate + output / decode rate) on one
    replica, times that replica's GPUs; response-cache hits take none, and an API-priced
    variant provisions and occupies no GPU. ``usage_usd`` is what those calls were charged.
    ``hours`` defaults to 24 per distinct day in ``calls``.
    """
    hours = window_hours(calls) if hours is None else float(hours)
    priced = priced if priced is not None else price_calls(calls, fleet)
    flat = priced.fleet_variants
    on_fleet = priced.fleet_variant >= 0
    busy_by = _bincount(priced.fleet_variant[on_fleet], priced.busy_gpu_seconds[on_fleet],
                        len(flat))
    usd_by = _bincount(priced.fleet_variant[on_fleet], priced.cost_usd[on_fleet], len(flat))
    rows = []
    for k, (tier_name, variant_name) in enumerate(flat):
        e = fleet.economics(tier_name, variant_name)
        provisioned = e.provisioned_gpus * hours  # 0 for an API-priced variant
        util = busy_by[k] / 3600.0 / provisioned if provisioned > 0 else None
        rows.append({
            "tier": tier_name,
            "variant": variant_name,
            "capacity_type": None if e.api_priced else str(e.capacity_type),
            "replicas": 0 if e.api_priced else e.replicas,
            "gpus": e.gpus_per_replica,
            "provisioned_gpu_hours": provisioned,
            "busy_gpu_hours": busy_by[k] / 3600.0,
            "utilisation": util,
            "idle_share": None if util is None else max(0.0, 1.0 - util),
            "reservation_usd": e.usd_per_hour * hours,
            "usage_usd": float(usd_by[k]),
        })
    frame = pd.DataFrame(rows)
    provisioned = float(frame["provisioned_gpu_hours"].sum())
    busy = float(frame["busy_gpu_hours"].sum())
    util = busy / provisioned if provisioned > 0 else None
    return ReservationView(
        by_variant=frame,
        hours=hours,
        provisioned_gpu_hours=provisioned,
        busy_gpu_hours=busy,
        reservation_usd=float(frame["reservation_usd"].sum()),
        usage_usd=float(frame["usage_usd"].sum()),
        utilisation=util,
        idle_share=None if util is None else max(0.0, 1.0 - util),
        spot_share=spot_share(fleet),
    )
