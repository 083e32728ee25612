"""Guardrail caps act on realised spend: the window measures how an attempt's spend varies,
and the replay's cap odds follow it (``experiments.window._spend_spread``,
``experiments.replay._cap_odds``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import lognorm

from experiments.window import DEFAULT_ATTEMPT_CV, _spend_spread


def test_spread_is_the_pooled_within_task_variation():
    rng = np.random.default_rng(0)
    n, per = 400, 3
    task = np.repeat(np.arange(n), per)
    means = rng.uniform(500, 5000, n)
    tokens = means[task] * rng.lognormal(-0.02, 0.2, len(task))
    cv, scale = _spend_spread(task, np.ones(len(task)), tokens, np.zeros(n, dtype=int), n)
    assert cv == pytest.approx(0.2, abs=0.02)
    # Tasks differ far more than one attempt's noise: their means are kept, nearly as seen.
    assert np.abs(scale - 1.0).max() < 0.1
    assert np.median(np.abs(scale - 1.0)) < 0.03


def test_a_task_seen_once_is_shrunk_toward_its_family_when_tasks_are_alike():
    rng = np.random.default_rng(1)
    n = 300
    # Half the tasks seen three times (they measure the spread), half once; all alike.
    task = np.concatenate([np.repeat(np.arange(150), 3), np.arange(150, n)])
    tokens = 1000.0 * rng.lognormal(-0.08, 0.4, len(task))
    cv, scale = _spend_spread(task, np.ones(len(task)), tokens, np.zeros(n, dtype=int), n)
    assert cv == pytest.approx(0.4, abs=0.06)
    once = np.arange(150, n)
    mean_once = np.bincount(task, tokens, minlength=n)[once]
    shrunk = mean_once * scale[once]
    # The shrunk means spread far less than the raw single draws.
    assert shrunk.std() < 0.5 * mean_once.std()


def test_no_task_seen_twice_falls_back_to_the_default_spread():
    task = np.arange(50)
    cv, scale = _spend_spread(task, np.ones(50), np.full(50, 800.0), np.zeros(50, dtype=int), 50)
    assert cv == DEFAULT_ATTEMPT_CV
    assert np.allclose(scale, 1.0)


def test_a_loose_cap_binds_on_the_share_of_attempts_that_spend_more(tmp_path):
    """One S attempt has not reached a cap of 1.5 S on average; with spread, those S
    attempts that spent more than 1.5x their mean have, and L is refused on them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_estimator import TWO_TIER_FLEET, _frames, _known_model

    from contracts.manifest import load_fleet
    from experiments.replay import ReplayContext, replay_policy
    from experiments.window import build_window
    from policies.policy import load_policy

    fleet = load_fleet(TWO_TIER_FLEET)
    window = build_window(*_frames(10), fleet)
    window.attempt_cv, window.spend_scale = 0.3, None
    c_s = 4.0 * 1 * 3.6 / 3600
    ctx = ReplayContext(window, _known_model([0.7, 0.9], 2), min_support=0,
                        evidence_prior=math.inf)
    cascade = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: t, created: 2026-01-01T00:00:00Z}
spec: {routing: {router: fixed, escalation: [S, L], max_attempts: 2},
       guardrails: {max_usd_per_task: %r}}
""" % (c_s * 1.5))
    values = replay_policy(cascade, ctx, doubly_robust=False)
    sigma = math.sqrt(math.log1p(0.3 ** 2))
    over = 1.0 - lognorm(s=sigma, scale=math.exp(-sigma ** 2 / 2)).cdf(1.5)
    # Refused after S failed and overspent: budget_exceeded = P(fail S) * P(spend > 1.5x).
    assert values.budget_exceeded.mean() == pytest.approx(0.3 * over, abs=0.015)
    assert 0 < values.budget_exceeded.mean() < 0.3


def test_tiers_answering_at_their_own_length_are_no_spread():
    """A reasoning tier's attempt is many times a small tier's: with attempts of one task on
    different tiers, that difference is the replay's (it prices each attempt on its tier),
    not noise. Before, a cascade window measured a spread of ~1 and the replay predicted a
    token cap at exactly a cascade's total to bind on half its tasks (it never binds)."""
    rng = np.random.default_rng(2)
    n = 300
    task = np.repeat(np.arange(n), 3)
    combo = np.tile(np.array([0, 1, 2]), n)
    length = np.array([1000.0, 3800.0, 8600.0])
    tokens = length[combo] * rng.lognormal(-0.005, 0.1, len(task))
    cv_mixed, _ = _spend_spread(task, np.ones(len(task)), tokens, np.zeros(n, dtype=int), n)
    cv, _ = _spend_spread(task, np.ones(len(task)), tokens, np.zeros(n, dtype=int), n,
                          combo=combo)
    assert cv_mixed > 0.7
    assert cv == pytest.approx(0.1, abs=0.02)
    exact = length[combo]
    cv0, scale = _spend_spread(task, np.ones(len(task)), exact, np.zeros(n, dtype=int), n,
                               combo=combo)
    assert cv0 == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(scale, 1.0)
