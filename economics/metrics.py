"""Metrics per team, repo, task family and day: cost per Green PR and what drives it.

``compute_metrics`` prices and links the window once (``costmodel.build_ledger``), reduces
everything to per-task numpy arrays, and sums those per group with ``np.bincount``, so a
million tasks take seconds. Pure: DataFrames in, a DataFrame out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from economics.costmodel import (
    UNKNOWN_LABEL,
    CostLedger,
    build_ledger,
    cost_per_green_pr,
    green_pr_mask,
    review_escapes,
    spot_share,
    window_hours,
)

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest
    from policies.policy import Policy

__all__ = [
    "DEFAULT_RUNAWAY_ATTEMPTS",
    "GROUP_KEYS",
    "METRIC_COLUMNS",
    "compute_metrics",
    "runaway_cap",
]

GROUP_KEYS: tuple[str, ...] = ("team", "repo", "family", "day")
DEFAULT_RUNAWAY_ATTEMPTS = 10

# The fixed columns, in order; ``tier_share_<tier>`` columns (one per tier, cheap first)
# come after ``cache_savings_usd`` and the group keys come first.
METRIC_COLUMNS: tuple[str, ...] = (
    "tasks",
    "green_prs",
    "fpy",
    "escape_rate",
    "spend_total",
    "spend_serve",
    "spend_shadow",
    "spend_gate",
    "spend_eval",
    "spend_verifier",
    "spend_rework",
    "cost_per_green_pr",
    "cost_per_green_pr_note",
    "eval_share",
    "rework_share",
    "calls",
    "cache_hit_rate",
    "prefix_token_hit_rate",
    "cache_savings_usd",
    "tier_L_share",
    "serve_attempts",
    "avg_attempts_per_task",
    "runaway_loops",
    "unpriced_calls",
    "gpu_utilisation",
    "idle_share",
    "spot_share",
)


def _bincount(codes: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    if weights is None:
        return np.bincount(codes, minlength=size).astype(np.int64)
    return np.bincount(codes, weights=weights, minlength=size)


def runaway_cap(policy: Policy | None = None, runaway_attempts: int | None = None) -> int:
    """Serve attempts above which a task is a runaway loop: explicit, else the policy's
    ``guardrails.max_attempts_per_task``, else 10."""
    if runaway_attempts is not None:
        return int(runaway_attempts)
    if policy is not None and policy.spec.guardrails.max_attempts_per_task is not None:
        return int(policy.spec.guardrails.max_attempts_per_task)
    return DEFAULT_RUNAWAY_ATTEMPTS


def _key_codes(key: str, tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
               ledger: CostLedger) -> tuple[np.ndarray, list[str]]:
    """Code per task code for one group key, and the sorted labels the codes index.

    Spend whose task span is outside the window has no team/repo/family (UNKNOWN_LABEL);
    its day is the day of its own first attempt or call, so per-day spend stays complete.
    """
    row_codes, uniques = pd.factorize(tasks[key], sort=True, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    codes = np.full(ledger.n_tasks, -1, dtype=np.int64)
    known = ledger.task_row >= 0
    codes[known] = row_codes[ledger.task_row[known]]
    missing = codes < 0
    if missing.any() and key == "day":
        days = np.full(ledger.n_tasks, None, dtype=object)
        for frame, task_codes in ((calls, ledger.call_task), (attempts, ledger.attempt_task)):
            if len(frame):
                # Later assignments win, so attempts (written last) override calls.
                values = frame["day"].to_numpy(dtype=object, na_value=None)
                need = missing[task_codes]
                days[task_codes[need][::-1]] = values[need][::-1]
        extra = sorted({d for d in days[missing] if d is not None} - set(labels))
        labels = sorted([*labels, *extra])
        position = {label: i for i, label in enumerate(labels)}
        remap = np.array([position[u] for u in map(str, uniques)] + [-1], dtype=np.int64)
        codes = np.where(known, remap[codes], -1)
        for i in np.flatnonzero(missing):
            if days[i] is not None:
                codes[i] = position[days[i]]
        missing = codes < 0
    if missing.any():
        labels = [*labels, UNKNOWN_LABEL]
        codes[missing] = len(labels) - 1
    return codes, labels


def _group_ids(by: Sequence[str], tasks: pd.DataFrame, attempts: pd.DataFrame,
               calls: pd.DataFrame, ledger: CostLedger) -> tuple[np.ndarray, pd.DataFrame]:
    """Group id per task code, and the frame of group key values (one row per group)."""
    if not by:
        return np.zeros(ledger.n_tasks, dtype=np.int64), pd.DataFrame(index=range(1))
    combined = np.zeros(ledger.n_tasks, dtype=np.int64)
    per_key: list[tuple[np.ndarray, list[str]]] = []
    for key in by:
        codes, labels = _key_codes(key, tasks, attempts, calls, ledger)
        combined = combined * len(labels) + codes
        per_key.append((codes, labels))
    present, group = np.unique(combined, return_inverse=True)
    keys: dict[str, object] = {}
    remainder = present
    for key, (_codes, labels) in reversed(list(zip(by, per_key, strict=True))):
        remainder, code = np.divmod(remainder, len(labels))
        keys[key] = pd.array(np.array(labels, dtype=object)[code], dtype="string")
    return group.astype(np.int64), pd.DataFrame({k: keys[k] for k in by})


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def compute_metrics(
    tasks: pd.DataFrame,
    attempts: pd.DataFrame,
    calls: pd.DataFrame,
    fleet: FleetManifest,
    *,
    by: Sequence[str] = (),
    default_verifier_cost_usd: float = 0.0,
    runaway_attempts: int | None = None,
    policy: Policy | None = None,
    hours: float | None = None,
) -> pd.DataFrame:
    """One row per group of ``by`` (any of team, repo, family, day; none: the whole window).

    Columns: the group keys, then ``METRIC_COLUMNS`` with ``tier_share_<tier>`` columns
    inserted after ``cache_savings_usd``. Spend is attributed to its task's group; spend
    whose task span is outside the window lands in the ``(unknown)`` group of team, repo and
    family. ``gpu_utilisation``, ``idle_share`` and ``spot_share`` are fleet-wide and are
    filled only when grouping by nothing or by day alone (NaN otherwise); ``hours``
    overrides the whole window's length (default: 24 per day seen).
    """
    by = list(by)
    bad = [k for k in by if k not in GROUP_KEYS]
    if bad or len(set(by)) != len(by):
        raise ValueError(f"group keys must be distinct names from {GROUP_KEYS} (got {by})")
    cap = runaway_cap(policy, runaway_attempts)

    ledger = build_ledger(tasks, attempts, calls, fleet,
                          default_verifier_cost_usd=default_verifier_cost_usd)
    n_u = ledger.n_tasks
    group, keys = _group_ids(by, tasks, attempts, calls, ledger)
    n_groups = len(keys)

    def per_group(values: np.ndarray | None, codes: np.ndarray = group) -> np.ndarray:
        return _bincount(codes, values, n_groups)

    # Per task code: only tasks whose span is in the window count as tasks.
    is_task = ledger.task_row >= 0
    row = ledger.task_row[is_task]
    green = np.zeros(n_u, dtype=bool)
    reviewed = np.zeros(n_u, dtype=bool)
    escaped = np.zeros(n_u, dtype=bool)
    if len(tasks):
        green[is_task] = green_pr_mask(tasks)[row]
        rev, esc = review_escapes(tasks)
        reviewed[is_task], escaped[is_task] = rev[row], esc[row]
    has_serve = ledger.task_has_serve & is_task
    first_passed = ledger.task_first_serve_passed & is_task
    serve_attempts = np.where(is_task, ledger.task_serve_attempts, 0)

    spend = {name: per_group(values) for name, values in ledger.task_spend().items()}
    n_tasks = per_group(is_task.astype(np.float64))
    greens = per_group(green.astype(np.float64))
    out: dict[str, object] = {
        "tasks": n_tasks.astype(np.int64),
        "green_prs": greens.astype(np.int64),
        "fpy": _ratio(per_group(first_passed.astype(np.float64)),
                      per_group(has_serve.astype(np.float64))),
        "escape_rate": _ratio(per_group(escaped.astype(np.float64)),
                              per_group(reviewed.astype(np.float64))),
    }
    for name in ("spend_total", "spend_serve", "spend_shadow", "spend_gate", "spend_eval",
                 "spend_verifier", "spend_rework"):
        out[name] = spend[name]
    costs = [cost_per_green_pr(float(s), int(g)) for s, g in zip(spend["spend_total"], greens,
                                                                  strict=True)]
    out["cost_per_green_pr"] = np.array([np.nan if c.value is None else c.value for c in costs])
    out["cost_per_green_pr_note"] = pd.array([c.reason for c in costs], dtype="string")
    out["eval_share"] = _ratio(spend["spend_eval"], spend["spend_total"])
    out["rework_share"] = _ratio(spend["spend_rework"], spend["spend_total"])

    priced = ledger.calls
    call_group = group[ledger.call_task]
    not_response = ~priced.response_hit
    out["calls"] = per_group(None, call_group)
    out["cache_hit_rate"] = _ratio(per_group(priced.cache_hit.astype(np.float64), call_group),
                                   out["calls"])
    out["prefix_token_hit_rate"] = _ratio(
        per_group(np.where(not_response, priced.cached_input_tokens, 0.0), call_group),
        per_group(np.where(not_response, priced.input_tokens, 0.0), call_group))
    out["cache_savings_usd"] = per_group(priced.cache_savings_usd, call_group)

    # Tier mix over serve attempts of tasks in the window, one bincount over (group, tier).
    labels = ledger.tier_labels
    n_tiers = len(labels)
    serve_rows = (ledger.attempt_purpose == 0) & is_task[ledger.attempt_task] \
        & (ledger.attempt_tier >= 0)
    cell = group[ledger.attempt_task[serve_rows]] * n_tiers + ledger.attempt_tier[serve_rows]
    mix = np.bincount(cell, minlength=n_groups * n_tiers).reshape(n_groups, n_tiers) \
        if n_tiers else np.zeros((n_groups, 0))
    serve_total = per_group(serve_attempts.astype(np.float64))
    tier_shares = {f"tier_share_{name}": _ratio(mix[:, i], serve_total)
                   for i, name in enumerate(labels)}
    top = fleet.tiers[-1].name
    out["tier_L_share"] = tier_shares[f"tier_share_{top}"]
    out["serve_attempts"] = serve_total.astype(np.int64)
    out["avg_attempts_per_task"] = _ratio(serve_total, n_tasks)
    out["runaway_loops"] = per_group((serve_attempts > cap).astype(np.float64)).astype(np.int64)
    out["unpriced_calls"] = per_group((~priced.priced).astype(np.float64),
                                      call_group).astype(np.int64)

    utilisation = np.full(n_groups, np.nan)
    idle = np.full(n_groups, np.nan)
    spot = np.full(n_groups, np.nan)
    if set(by) <= {"day"}:
        gpus = sum(v.economics.provisioned_gpus for t in fleet.tiers for v in t.variants)
        if by:
            window = np.full(n_groups, 24.0)
        else:
            window = np.array([window_hours(tasks, attempts, calls) if hours is None else hours])
        busy_hours = per_group(priced.busy_gpu_seconds, call_group) / 3600.0
        utilisation = _ratio(busy_hours, gpus * window)
        idle = np.clip(1.0 - utilisation, 0.0, None)
        share = spot_share(fleet)
        spot = np.full(n_groups, np.nan if share is None else share)
    out["gpu_utilisation"], out["idle_share"], out["spot_share"] = utilisation, idle, spot

    columns: dict[str, object] = {k: keys[k].array for k in by}
    for name in METRIC_COLUMNS:
        columns[name] = out[name]
        if name == "cache_savings_usd":
            columns.update(tier_shares)
    return pd.DataFrame(columns, index=pd.RangeIndex(n_groups))
