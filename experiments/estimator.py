"""The estimate of a policy on a window: Green PRs, FPY, cost per Green PR, with intervals.

Intervals are percentile bootstraps over tasks (Poisson weights, drawn once per window and
seed so a candidate and the active policy are compared on the same resamples: paired
deltas). Where the policy puts mass on (tier, variant, adapter) combinations the window
never observed, the data cannot say how they perform: the interval is widened to include
the replays with those combinations always failing and always passing, so such a
candidate can never look confidently better. ``support`` is the share of the policy's
expected attempts on observed combinations.

``widen`` (default 1.0) scales every interval's half-widths around its point, and
``compare`` does the same to the deltas of a widened candidate: the nightly passes a lever's
factor from the calibration record (``controlplane.loop.calibration``), so a lever whose
realised changes fell outside their intervals gets wider ones until it is calibrated again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.outcomes import OutcomeModels
from experiments.replay import (
    ReplayContext,
    TaskValues,
    attach_model_refits,
    evidence_influence,
    model_deviations,
    price_influence,
    replay_policy,
)
from experiments.window import as_window

__all__ = [
    "Deltas",
    "Estimate",
    "Interval",
    "bootstrap_weights",
    "compare",
    "estimate",
    "point_summary",
]


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.point:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass
class Estimate:
    """What the window would have given under a policy (see the module docstring)."""

    policy_hash: str
    n_tasks: int
    green_prs: Interval
    fpy: Interval
    cost_per_green_pr: Interval
    spend_usd: Interval
    decomposition: dict[str, Interval]  # spend by driver: serve, rework, verifier, eval
    support: float
    budget_exceeded: float
    level: float
    notes: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)  # prices the window could not show
    values: TaskValues | None = field(default=None, repr=False)
    replicates: np.ndarray | None = field(default=None, repr=False)  # [B, 3] green, cost, fpy
    envelope: dict[str, tuple[float, float, float]] = field(default_factory=dict, repr=False)
    widen: float = 1.0  # interval half-widths scaled by this (calibration record)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy_hash": self.policy_hash,
            "n_tasks": self.n_tasks,
            "green_prs": self.green_prs.as_dict(),
            "fpy": self.fpy.as_dict(),
            "cost_per_green_pr": self.cost_per_green_pr.as_dict(),
            "spend_usd": self.spend_usd.as_dict(),
            "decomposition": {k: v.as_dict() for k, v in self.decomposition.items()},
            "support": self.support,
            "budget_exceeded": self.budget_exceeded,
            "level": self.level,
            "notes": list(self.notes),
            "assumptions": list(self.assumptions),
        }


@dataclass(frozen=True)
class Deltas:
    """Candidate minus active on the same window and resamples."""

    green_prs: Interval  # relative: (candidate - active) / active
    fpy: Interval  # absolute
    cost_per_green_pr: Interval  # relative

    def as_dict(self) -> dict[str, Any]:
        return {"green_prs_rel": self.green_prs.as_dict(), "fpy_abs": self.fpy.as_dict(),
                "cost_per_green_pr_rel": self.cost_per_green_pr.as_dict()}


def bootstrap_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """[B, n] Poisson(1) resample weights (float32 keeps 200 x 100k at 80 MB)."""
    rng = np.random.default_rng(seed)
    return rng.poisson(1.0, size=(replicates, n)).astype(np.float32)


def _ratio(cost: np.ndarray, green: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(green > 0, cost / np.maximum(green, 1e-12), np.inf)


def point_summary(values: TaskValues) -> dict[str, float]:
    green, cost = float(values.green.sum()), float(values.cost.sum())
    attempts = float(values.attempts.sum())
    return {
        "green_prs": green,
        "cost_usd": cost,
        "fpy": float(values.fpy.mean()),
        "cost_per_green_pr": cost / green if green > 0 else float("inf"),
        "support": 1.0 - float(values.unsupported.sum()) / attempts if attempts > 0 else 1.0,
    }


def _interval(point: float, reps: np.ndarray, level: float, extra: tuple[float, ...] = ()
              ) -> Interval:
    a = (1.0 - level) / 2.0
    finite = reps[np.isfinite(reps)]
    if len(finite) < len(reps) * 0.5:
        low, high = -np.inf, np.inf
    else:
        low, high = float(np.quantile(finite, a)), float(np.quantile(finite, 1 - a))
        if len(finite) < len(reps):
            high = float("inf")
    for e in extra:
        low, high = min(low, e), max(high, e)
    return Interval(float(point), low, high)


def _widened(interval: Interval, widen: float) -> Interval:
    """``interval`` with its half-widths scaled by ``widen`` around the point."""
    if widen == 1.0 or not np.isfinite(interval.point):
        return interval
    p = interval.point
    return Interval(p, p - widen * (p - interval.low), p + widen * (interval.high - p))


def estimate(policy, window, fleet=None, models: OutcomeModels | None = None, *,
             bootstrap: int = 200, seed: int = 0, level: float = 0.9, min_support: int = 20,
             context: ReplayContext | None = None, weights: np.ndarray | None = None,
             widen: float = 1.0) -> Estimate:
    """Estimate ``policy`` on ``window`` (a compiled Window or (tasks, attempts, calls)).

    ``widen``: scale every interval's half-widths around its point (1.0: as estimated)."""
    from experiments.outcomes import fit_outcome_models

    if not (np.isfinite(widen) and widen > 0):
        raise ValueError(f"widen must be a positive finite number (got {widen!r})")

    if context is None:
        window = as_window(window, fleet)
        models = models if models is not None else fit_outcome_models(window, seed=seed)
        context = attach_model_refits(ReplayContext(window, models, min_support=min_support),
                                      seed=seed)
    window = context.window
    if fleet is not None:
        from policies.policy import validate_against_fleet

        validate_against_fleet(policy, fleet)
    values = replay_policy(policy, context)
    summary = point_summary(values)
    W = weights if weights is not None else bootstrap_weights(window.n, bootstrap, seed)
    cols = np.stack([values.green, values.cost, values.fpy, values.serve, values.rework,
                     values.verifier, values.eval], axis=1).astype(np.float32)
    # The per-state corrections' own sampling error, on the same resamples (zero-sum terms).
    influence = (evidence_influence(policy, context, values)
                 + price_influence(policy, context, values))
    cols += influence[:, [TaskValues.COLUMN_NAMES.index(c) for c in (
        "green", "cost", "fpy", "serve", "rework", "verifier", "eval")]].astype(np.float32)
    sums = (W @ cols).astype(np.float64)  # [B, 7]
    counts = W.sum(axis=1).astype(np.float64)
    scale = window.n / np.maximum(counts, 1.0)  # report totals on the window's size
    g_rep, c_rep = sums[:, 0] * scale, sums[:, 1] * scale
    f_rep = sums[:, 2] / np.maximum(counts, 1.0)
    dev = model_deviations(policy, context)
    if len(dev):
        # The outcome model's own fit error (``replay.attach_model_refits``): resample b
        # also moves by refit b mod k's deviation, the same refit for every policy.
        pick = np.arange(len(g_rep)) % len(dev)
        col = {c: TaskValues.COLUMN_NAMES.index(c) for c in ("green", "cost", "fpy")}
        g_rep = g_rep + dev[pick, col["green"]]
        c_rep = c_rep + dev[pick, col["cost"]]
        f_rep = f_rep + dev[pick, col["fpy"]] / max(window.n, 1)
    cpg_rep = _ratio(c_rep, g_rep)
    envelope: dict[str, tuple[float, float, float]] = {}
    notes: list[str] = list(window.notes)
    if summary["support"] < 1.0 - 1e-9:
        for side in ("low", "high"):
            v = replay_policy(policy, context, envelope=side)
            s = point_summary(v)
            envelope[side] = (s["green_prs"], s["fpy"], s["cost_per_green_pr"])
        notes.append(f"{100 * (1 - summary['support']):.1f}% of expected attempts fall on "
                     "combinations the window never observed: intervals include their "
                     "always-fail and always-pass bounds")
    assumptions: list[str] = []
    if policy.spec.cache.response.enabled:
        missing = [f for f in window.families
                   if f not in window.response_hit_rate
                   and f not in policy.spec.cache.response.exclude_families]
        if missing:
            assumptions.append("response cache hit rate unobserved for "
                               f"{', '.join(missing)}: priced as no hits")
    unseen = [t for t, on in policy.spec.cache.prefix.items()
              if on and t not in window.cached_share]
    if unseen:
        assumptions.append(f"prefix cache never observed on {', '.join(unseen)}: priced at "
                           "the other tiers' cached share")
    notes.extend(assumptions)
    no_propensity = int((np.isnan(window.propensity) & (window.logged_len > 0)).sum())
    if no_propensity:
        notes.append(f"{no_propensity} task(s) logged no propensity: the outcome model alone "
                     "judges them (no off-policy correction)")
    env = list(envelope.values())
    decomposition = {
        name: _widened(_interval(float(getattr(values, name).sum()), sums[:, k] * scale,
                                 level), widen)
        for k, name in ((3, "serve"), (4, "rework"), (5, "verifier"), (6, "eval"))
    }
    return Estimate(
        policy_hash=policy.content_hash,
        n_tasks=window.n,
        green_prs=_widened(_interval(summary["green_prs"], g_rep, level,
                                     tuple(e[0] for e in env)), widen),
        fpy=_widened(_interval(summary["fpy"], f_rep, level, tuple(e[1] for e in env)), widen),
        cost_per_green_pr=_widened(_interval(summary["cost_per_green_pr"], cpg_rep, level,
                                             tuple(e[2] for e in env)), widen),
        spend_usd=_widened(_interval(summary["cost_usd"], c_rep, level), widen),
        decomposition=decomposition,
        support=summary["support"],
        budget_exceeded=float(values.budget_exceeded.sum()),
        level=level,
        notes=notes,
        assumptions=assumptions,
        values=values,
        replicates=np.stack([g_rep, c_rep, f_rep], axis=1),
        envelope=envelope,
        widen=float(widen),
    )


def compare(candidate: Estimate, active: Estimate) -> Deltas:
    """Paired deltas (same resamples), widened by the candidate's unobserved-combo bounds
    and by its ``widen`` (half-widths scaled around the point)."""
    if candidate.replicates is None or active.replicates is None:
        raise ValueError("compare needs estimates made with bootstrap replicates")
    if candidate.replicates.shape != active.replicates.shape:
        raise ValueError("estimates were made with different bootstrap sizes")
    level = candidate.level
    cg, cc, cf = candidate.replicates.T
    ag, ac, af = active.replicates.T
    g_active = active.green_prs.point
    c_active = active.cost_per_green_pr.point
    rel_green = (cg - ag) / np.maximum(ag, 1e-12)
    d_fpy = cf - af
    rel_cpg = _ratio(cc, cg) / np.maximum(_ratio(ac, ag), 1e-12) - 1.0
    env = list(candidate.envelope.values())
    w = candidate.widen
    return Deltas(
        green_prs=_widened(_interval(candidate.green_prs.point / max(g_active, 1e-12) - 1.0,
                                     rel_green, level,
                                     tuple(e[0] / max(g_active, 1e-12) - 1.0 for e in env)), w),
        fpy=_widened(_interval(candidate.fpy.point - active.fpy.point, d_fpy, level,
                               tuple(e[1] - active.fpy.point for e in env)), w),
        cost_per_green_pr=_widened(_interval(candidate.cost_per_green_pr.point
                                             / max(c_active, 1e-12) - 1.0, rel_cpg, level,
                                             tuple(e[2] / max(c_active, 1e-12) - 1.0
                                                   for e in env)), w),
    )
