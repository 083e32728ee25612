"""The full-information anchor: exact outcomes of static orders, and the best of them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments.anchor import FullInformation, best_static, order_outcomes, orders


def table(seed=0, n=400):
    rng = np.random.default_rng(seed)
    cells = tuple((f, d) for f, d in zip(rng.choice(["a", "b"], n), rng.integers(1, 3, n)))
    skill = np.array([0.3, 0.5, 0.8])  # S, M, L
    hard = np.array([0.0 if d == 1 else 0.25 for _, d in cells])
    easy_a = np.array([0.4 if f == "a" else 0.0 for f, _ in cells])
    p = np.clip(skill[None, :] - hard[:, None] + easy_a[:, None] * (skill[None, :] < 0.5), 0, 1)
    passed = rng.random((n, 3)) < p
    cost = np.tile([1.0, 5.0, 68.0], (n, 1)) * rng.uniform(0.8, 1.2, (n, 1))
    return FullInformation(("S", "M", "L"), cells, passed, cost)


def test_orders_and_exact_outcomes():
    assert len(orders(("S", "M", "L"))) == 15
    info = FullInformation(("S", "L"), (("a", 1), ("a", 1)),
                           np.array([[True, True], [False, True]]),
                           np.array([[1.0, 10.0], [1.0, 10.0]]))
    green, spend = order_outcomes(info, (0, 1))
    assert green.tolist() == [True, True] and spend.tolist() == [1.0, 11.0]
    green, spend = order_outcomes(info, (0,), max_attempts=3)  # retries repeat, and pay
    assert green.tolist() == [True, False] and spend.tolist() == [1.0, 3.0]


def test_best_static_is_the_brute_force_optimum_on_a_small_table():
    info = table()
    naive_green = int(order_outcomes(info, (2,))[0].sum())
    anchor = best_static(info, reference_green=naive_green, margin=0.02)
    assert anchor.green_prs >= 0.98 * naive_green
    # Brute force over every per-cell choice (4 cells x 15 orders).
    cells = sorted(set(info.cells))
    per = {}
    for cell in cells:
        mask = np.array([c == cell for c in info.cells])
        for o in orders(info.tiers):
            g, s = order_outcomes(info, o)
            per[cell, o] = (g[mask].sum(), s[mask].sum())
    best = np.inf
    for combo in itertools.product(orders(info.tiers), repeat=len(cells)):
        g = sum(per[cell, o][0] for cell, o in zip(cells, combo))
        s = sum(per[cell, o][1] for cell, o in zip(cells, combo))
        if g >= 0.98 * naive_green and g > 0:
            best = min(best, s / g)
    assert anchor.cost_per_green_pr == pytest.approx(best, rel=0.03)
    assert anchor.cost_per_green_pr < anchor.single_tier["L"]["cost_per_green_pr"]


def test_an_unreachable_reference_is_refused():
    info = table(n=50)
    with pytest.raises(ValueError, match="no static policy"):
        best_static(info, reference_green=10_000)
