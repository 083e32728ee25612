"""The outcome model's own fit error in the interval: half-sample refits
(``replay.attach_model_refits``, ``replay.model_deviations``, ``estimator.estimate``)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.estimator import bootstrap_weights, compare, estimate
from experiments.replay import (
    ReplayContext,
    TaskValues,
    attach_model_refits,
    model_deviations,
    replay_policy,
)


def _cheap_first(policy):
    """Every task starts on S: the steps after S fails lean on the outcome model."""
    return policy.evolve(author="t", routing=policy.spec.routing.model_copy(update={
        "router": "fixed", "exploration_rate": 0.0}))


@pytest.fixture(scope="module")
def refitted(logged, models):
    _, window = logged
    return attach_model_refits(ReplayContext(window, models), 6, seed=1)


def test_refits_are_contexts_on_the_whole_window_fitted_on_halves(refitted):
    assert len(refitted.refits) == 6
    assert all(rc.window is refitted.window for rc in refitted.refits)
    # Complementary halves: every task is in exactly one half of each pair, so the refits'
    # models differ from the full fit and from each other.
    probs = [rc.logits.mean() for rc in refitted.refits]
    assert len(set(np.round(probs, 9))) == 6 and refitted.logits.mean() not in probs
    assert attach_model_refits(ReplayContext(refitted.window, refitted.models), 0).refits == []


def test_deviations_are_each_refits_totals_about_their_mean(refitted, logging_policy):
    policy = _cheap_first(logging_policy)
    dev = model_deviations(policy, refitted)
    assert dev.shape == (6, len(TaskValues.COLUMN_NAMES))
    np.testing.assert_allclose(dev.sum(axis=0), 0.0, atol=1e-9)
    totals = np.array([replay_policy(policy, rc).columns().sum(axis=0)
                       for rc in refitted.refits])
    cost = TaskValues.COLUMN_NAMES.index("cost")
    # Their mean square is the refits' unbiased variance.
    assert np.mean(dev[:, cost] ** 2) == pytest.approx(totals[:, cost].var(ddof=1))
    assert np.abs(dev[:, cost]).max() > 0
    assert model_deviations(policy, ReplayContext(refitted.window, refitted.models)).shape \
        == (0, len(TaskValues.COLUMN_NAMES))


def test_each_resample_moves_by_one_refits_deviation_the_same_for_every_policy(
        refitted, logged, logging_policy, models):
    """Resample b carries refit b mod k's deviation: the point stays, the replicates move by
    exactly that, and a paired delta sees the same refit on both sides."""
    _, window = logged
    plain = ReplayContext(window, models)
    W = bootstrap_weights(window.n, 60, 3)
    pick = np.arange(60) % 6
    green, cost = (TaskValues.COLUMN_NAMES.index(c) for c in ("green", "cost"))
    for policy in (logging_policy, _cheap_first(logging_policy)):
        with_fit = estimate(policy, window, context=refitted, weights=W)
        without = estimate(policy, window, context=plain, weights=W)
        assert with_fit.cost_per_green_pr.point == without.cost_per_green_pr.point
        dev = model_deviations(policy, refitted)
        moved = with_fit.replicates - without.replicates
        np.testing.assert_allclose(moved[:, 0], dev[pick, green], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(moved[:, 1], dev[pick, cost], rtol=1e-6, atol=1e-9)
    # A policy compared with itself: the same refit on both sides, no spread at all.
    same = compare(estimate(logging_policy, window, context=refitted, weights=W),
                   estimate(logging_policy, window, context=refitted, weights=W))
    assert same.cost_per_green_pr.width == 0.0


def test_an_estimate_from_the_window_alone_carries_refits(logged, logging_policy, models,
                                                          monkeypatch):
    from experiments import replay

    calls = []
    real = replay.attach_model_refits

    def spy(ctx, k=replay.MODEL_REFITS, seed=0):
        calls.append(k)
        return real(ctx, k, seed)

    monkeypatch.setattr("experiments.estimator.attach_model_refits", spy)
    estimate(logging_policy, logged[1], models=models, bootstrap=20)
    assert calls == [replay.MODEL_REFITS]
