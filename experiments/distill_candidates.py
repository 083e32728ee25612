"""Which task families to distil: a pure ranking over the telemetry tables.

A family qualifies when the tiers above the distillation target carry a large share of its
spend (``min_upper_share``), its verifier is stable, and it has enough tasks. Stability is
read from the telemetry two ways: with deterministic decoding, two attempts of one task on
the same tier/variant/adapter see the same output, so their verdicts must agree
(``flaky_share``: tasks where they disagree); and, where reviewers are recorded, a
verifier-passed change the reviewer refused is an escape (``escape_rate``).

The saving assumes a distilled adapter on the target tier passes ``target_pass_rate`` of
the family's first attempts and that a failure then costs what the task costs today (its
whole current path: a conservative bound, since tasks that already start on the target
tier gain nothing and are counted so):

    spend_after = n * (c_target + v) + (1 - p) * spend_now
    green_after = p * n * accept + (1 - p) * green_now

with ``c_target`` the price of one attempt of the family's mean tokens on the target tier
and ``v`` the verifier cost per attempt. Rows are ranked by ``saving_usd``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DistillCandidate", "distill_candidates"]


@dataclass(frozen=True)
class DistillCandidate:
    family: str
    tasks: int
    spend_usd: float
    upper_share: float  # share of the family's model spend on tiers above the target
    top_share: float  # share on the highest-ranked tier
    green_prs: int
    cost_per_green_pr: float | None
    flaky_share: float  # tasks whose same-combo attempts disagreed, over tasks with repeats
    escape_rate: float | None
    target_tier: str
    target_pass_rate: float
    target_attempt_usd: float
    spend_after_usd: float
    cost_per_green_pr_after: float | None
    saving_usd: float
    qualifies: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flaky(attempts: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per task: had two attempts on one combo (bool), and their verdicts disagreed (bool)."""
    a = attempts[attempts["passed"].notna()].copy()
    if a.empty:
        empty = pd.Series(dtype=bool)
        return empty, empty
    a["combo"] = [f"{t}/{v}/{d}" for t, v, d in zip(
        a["tier"].astype(object).fillna("-"), a["variant"].astype(object).fillna("-"),
        a["adapter"].astype(object).fillna("-"))]
    a["passed"] = a["passed"].astype(bool)
    g = a.groupby(["task_id", "combo"])["passed"].agg(["size", "min", "max"])
    repeated = (g["size"] > 1).groupby(level=0).any()
    disagree = ((g["size"] > 1) & (g["min"] != g["max"])).groupby(level=0).any()
    return repeated, disagree


def distill_candidates(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                       fleet: Any, *, target_tier: str | None = None,
                       target_pass_rate: float = 0.6, min_upper_share: float = 0.5,
                       max_flaky_share: float = 0.02, max_escape_rate: float = 0.05,
                       min_tasks: int = 20, default_verifier_cost_usd: float = 0.0,
                       exclude_families: frozenset[str] = frozenset()
                       ) -> list[DistillCandidate]:
    """Every family of the window with its numbers, qualifying ones first, by saving."""
    from economics.costmodel import green_pr_mask, price_calls

    if not 0 < target_pass_rate <= 1:
        raise ValueError("target_pass_rate must be in (0, 1]")
    tiers = fleet.tiers
    target = fleet.tier(target_tier) if target_tier else tiers[0]
    top = tiers[-1]
    upper = {t.name for t in tiers if t.rank > target.rank}
    econ = target.variant().economics

    tasks = tasks.drop_duplicates("task_id")
    family_of = dict(zip(tasks["task_id"].astype(str), tasks["family"].fillna("(none)")))
    priced = price_calls(calls, fleet)
    c = pd.DataFrame({"task_id": calls["task_id"].astype(str).to_numpy(),
                      "tier": calls["tier"].astype(object).to_numpy(),
                      "cost": priced.cost_usd,
                      "inp": priced.input_tokens, "out": priced.output_tokens,
                      "attempt": calls["attempt"].to_numpy(dtype=float, na_value=1.0)})
    c["family"] = c["task_id"].map(family_of)
    c = c[c["family"].notna()]
    verifier = tasks["verifier_cost_usd"].to_numpy(dtype=float, na_value=np.nan)
    verifier = np.where(np.isnan(verifier), default_verifier_cost_usd, verifier)
    t = pd.DataFrame({"task_id": tasks["task_id"].astype(str).to_numpy(),
                      "family": tasks["family"].fillna("(none)").to_numpy(),
                      "green": green_pr_mask(tasks), "verifier": verifier,
                      "passed": tasks["verifier_passed"].to_numpy(dtype=bool, na_value=False),
                      "reviewed": tasks["review_accepted"].notna().to_numpy(),
                      "refused": ~tasks["review_accepted"].fillna(True).to_numpy(dtype=bool)})
    serve = attempts[attempts["purpose"].fillna("serve") == "serve"]
    n_attempts = serve.groupby(serve["task_id"].astype(str)).size()
    t["attempts"] = t["task_id"].map(n_attempts).fillna(0).to_numpy()
    repeated, disagree = _flaky(attempts.assign(task_id=attempts["task_id"].astype(str)))

    rows: list[DistillCandidate] = []
    for family, ft in t.groupby("family", sort=True):
        fc = c[c["family"] == family]
        n = len(ft)
        model_spend = float(fc["cost"].sum())
        spend = model_spend + float(ft["verifier"].sum())
        upper_share = float(fc.loc[fc["tier"].isin(upper), "cost"].sum() / model_spend
                            ) if model_spend > 0 else 0.0
        top_share = float(fc.loc[fc["tier"] == top.name, "cost"].sum() / model_spend
                          ) if model_spend > 0 else 0.0
        green = int(ft["green"].sum())
        ids = set(ft["task_id"])
        rep = repeated[repeated.index.isin(ids)]
        flaky = float(disagree[disagree.index.isin(ids)].sum() / rep.sum()) if rep.sum() else 0.0
        reviewed = ft["reviewed"] & ft["passed"]
        escape = float((reviewed & ft["refused"]).sum() / reviewed.sum()) if reviewed.sum() \
            else None
        per_attempt_calls = fc.groupby(["task_id", "attempt"])[["inp", "out"]].sum()
        mean_in = float(per_attempt_calls["inp"].mean()) if len(per_attempt_calls) else 0.0
        mean_out = float(per_attempt_calls["out"].mean()) if len(per_attempt_calls) else 0.0
        total_attempts = float(ft["attempts"].sum())
        v = float(ft["verifier"].sum() / total_attempts) if total_attempts else 0.0
        c_target = mean_in * econ.usd_per_input_token + mean_out * econ.usd_per_output_token
        p = target_pass_rate
        accept = float(ft["green"].sum() / ft["passed"].sum()) if ft["passed"].sum() else 1.0
        spend_after = n * (c_target + v) + (1 - p) * spend
        green_after = p * n * accept + (1 - p) * green
        saving = spend - spend_after
        reasons = []
        if family in exclude_families:
            reasons.append("excluded by policy or settings")
        if n < min_tasks:
            reasons.append(f"{n} tasks < {min_tasks}")
        if upper_share < min_upper_share:
            reasons.append(f"upper-tier share {upper_share:.2f} < {min_upper_share:.2f}")
        if flaky > max_flaky_share:
            reasons.append(f"verifier flaky on {flaky:.1%} of repeated tasks")
        if escape is not None and escape > max_escape_rate:
            reasons.append(f"review escape rate {escape:.1%} > {max_escape_rate:.1%}")
        if saving <= 0:
            reasons.append("no saving at the target pass rate")
        rows.append(DistillCandidate(
            family=str(family), tasks=n, spend_usd=spend, upper_share=upper_share,
            top_share=top_share, green_prs=green,
            cost_per_green_pr=spend / green if green else None, flaky_share=flaky,
            escape_rate=escape, target_tier=target.name, target_pass_rate=p,
            target_attempt_usd=c_target, spend_after_usd=spend_after,
            cost_per_green_pr_after=spend_after / green_after if green_after > 0 else None,
            saving_usd=saving, qualifies=not reasons,
            reason="; ".join(reasons) or "qualifies"))
    rows.sort(key=lambda r: (not r.qualifies, -r.saving_usd, r.family))
    return rows
