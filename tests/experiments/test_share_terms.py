"""The cached share a prefix price is measured at carries its sampling error into the
interval (``Window.share_terms``, ``replay.price_influence``)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.estimator import compare, estimate
from experiments.outcomes import fit_outcome_models
from experiments.replay import ReplayContext, price_influence, replay_policy

HEAD = """apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: t, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [S, M, L], max_attempts: 3}
"""


def _policy(cache: str):
    from policies.policy import load_policy

    return load_policy(HEAD + f"  cache: {cache}\n")


@pytest.fixture(scope="module")
def cached(fleet, tmp_path_factory):
    from experiments_testkit import simulate_window

    logging = _policy("{prefix: {S: true, M: true}}")
    _, window = simulate_window(logging, fleet, tmp_path_factory.mktemp("cached"),
                                tasks=3000, seed=2)
    return logging, window, ReplayContext(window, fit_outcome_models(window))


def test_share_terms_follow_the_window_prices(cached):
    _, window, _ = cached
    terms = window.share_terms
    assert terms is not None and terms.names == [*window.cached_share, "pooled"]
    # Each share's influences sum to 0: the share re-measured on the window itself.
    assert np.abs(terms.influence.sum(axis=1)).max() < 1e-9
    L = window.combo_index("L", None, None)
    assert terms.names[terms.param[L]] == "pooled"  # L never cached: the tiers' mean
    assert (terms.slope[:, L] <= 0).all() and (terms.slope[:, L] < 0).any()
    half = window.subset(np.arange(window.n // 2))
    assert half.share_terms.slope.shape == (window.n // 2, len(window.combos))


def test_a_prefix_change_carries_the_shares_error(cached):
    """Turning the prefix cache on for L prices L at the pooled share: its sampling error
    widens the interval; a policy that caches nowhere gets no such term."""
    logging, window, ctx = cached
    on_l = _policy("{prefix: {S: true, M: true, L: true}}")
    values = replay_policy(on_l, ctx)
    influence = price_influence(on_l, ctx, values)
    assert np.abs(influence.sum(axis=0)).max() < 1e-6 * max(1.0, np.abs(influence).max())
    assert np.abs(influence).max() > 0
    nowhere = _policy("{prefix: {}}")
    assert not price_influence(nowhere, ctx, replay_policy(nowhere, ctx)).any()

    active = estimate(logging, window, context=ctx, bootstrap=200, seed=1)
    delta = compare(estimate(on_l, window, context=ctx, bootstrap=200, seed=1), active)
    assert delta.cost_per_green_pr.point < 0
    assert delta.cost_per_green_pr.width > 0
