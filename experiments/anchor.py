"""The anchor to beat: the best *static* policy with full information.

Every task of a held-out day is run once on every tier (cheap on a small fleet). Serving
decodes greedily at temperature 0, so a task's outcome on a tier is one fixed verdict and a
retry on the same tier repeats it: the Green PRs and spend of any static routing (per
family x difficulty cell: an escalation order over the tiers, each tier tried once) follow
exactly from the table, with no model in between. ``best_static`` searches that space for
the lowest cost per Green PR whose Green PRs are within ``margin`` of a reference (the
naive start's), by a Lagrangian sweep: for a price ``lam`` of a Green PR every cell picks
the order minimising ``cost - lam * green`` on its own, and the best feasible ratio over the
sweep is kept. A routing lever that can route per family and difficulty (family overrides
with a difficulty score) can express every policy this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np

__all__ = ["AnchorResult", "FullInformation", "best_static", "order_outcomes", "orders"]


@dataclass(frozen=True)
class FullInformation:
    """Per task: its cell and, per tier, whether its one attempt passed and what it cost."""

    tiers: tuple[str, ...]
    cells: tuple[tuple[str, int], ...]  # per task: (family, difficulty)
    passed: np.ndarray  # [n, T] bool
    cost: np.ndarray  # [n, T] USD of one attempt (verifier included)


@dataclass
class AnchorResult:
    cost_per_green_pr: float
    green_prs: int
    tasks: int
    spend: float
    choice: dict[tuple[str, int], tuple[str, ...]]  # cell -> escalation order
    reference_green_prs: int | None
    single_tier: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def green_rate(self) -> float:
        return self.green_prs / max(self.tasks, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"cost_per_green_pr": self.cost_per_green_pr, "green_prs": self.green_prs,
                "green_rate": self.green_rate, "tasks": self.tasks, "spend": self.spend,
                "reference_green_prs": self.reference_green_prs,
                "single_tier": self.single_tier,
                "choice": {f"{f}/d{d}": ">".join(o) for (f, d), o in sorted(self.choice.items())}}


def orders(tiers: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Every escalation order: a non-empty ordered subset of the tiers (indices)."""
    out: list[tuple[int, ...]] = []
    for k in range(1, len(tiers) + 1):
        out.extend(permutations(range(len(tiers)), k))
    return out


def order_outcomes(info: FullInformation, order: tuple[int, ...], max_attempts: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(green, spend) per task when each task tries ``order`` until one passes; attempts
    beyond the order repeat its last tier (same verdict, paid again)."""
    steps = list(order)
    if max_attempts is not None:
        steps = (steps + [order[-1]] * max_attempts)[:max_attempts]
    n = len(info.cells)
    green = np.zeros(n, dtype=bool)
    spend = np.zeros(n)
    for t in steps:
        open_ = ~green
        spend[open_] += info.cost[open_, t]
        green |= open_ & info.passed[:, t]
    return green, spend


def best_static(info: FullInformation, *, reference_green: int | None = None,
                margin: float = 0.02, sweep: int = 400) -> AnchorResult:
    """The lowest cost per Green PR over static per-cell escalation orders whose Green PRs
    are at least ``(1 - margin) * reference_green`` (no constraint when None)."""
    cells = sorted(set(info.cells))
    index = {c: i for i, c in enumerate(cells)}
    code = np.array([index[c] for c in info.cells])
    options = orders(info.tiers)
    # [cells, options]: Green PRs and spend of each order in each cell.
    g = np.zeros((len(cells), len(options)))
    c = np.zeros((len(cells), len(options)))
    for j, order in enumerate(options):
        green, spend = order_outcomes(info, order)
        g[:, j] = np.bincount(code, weights=green.astype(float), minlength=len(cells))
        c[:, j] = np.bincount(code, weights=spend, minlength=len(cells))
    need = -np.inf if reference_green is None else (1.0 - margin) * reference_green
    typical = float(np.median(info.cost[info.cost > 0])) if np.any(info.cost > 0) else 1.0
    best: tuple[float, np.ndarray] | None = None
    for lam in np.geomspace(typical * 1e-3, typical * 1e4, sweep):
        pick = np.argmin(c - lam * g, axis=1)
        total_g = float(g[np.arange(len(cells)), pick].sum())
        total_c = float(c[np.arange(len(cells)), pick].sum())
        if total_g <= 0 or total_g < need:
            continue
        ratio = total_c / total_g
        if best is None or ratio < best[0]:
            best = (ratio, pick)
    if best is None:
        raise ValueError(f"no static policy reaches {need:.0f} Green PRs on this table")
    pick = best[1]
    rows = np.arange(len(cells))
    singles = {}
    for t, tier in enumerate(info.tiers):
        green, spend = order_outcomes(info, (t,))
        singles[tier] = {"green_prs": int(green.sum()), "spend": float(spend.sum()),
                         "cost_per_green_pr": float(spend.sum() / max(green.sum(), 1))}
    return AnchorResult(
        cost_per_green_pr=best[0], green_prs=round(g[rows, pick].sum()),
        tasks=len(info.cells), spend=float(c[rows, pick].sum()),
        choice={cells[i]: tuple(info.tiers[t] for t in options[pick[i]]) for i in rows},
        reference_green_prs=reference_green, single_tier=singles)
