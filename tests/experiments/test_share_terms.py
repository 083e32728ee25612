"""The cached share a prefix price is measured at carries its sampling error into the
interval (``Window.share_terms``, ``replay.price_influence``)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.estimator import compare, estimate
from experiments.outcomes import fit_outcome_models
from experiments.replay import ReplayContext, TaskValues, price_influence, replay_policy

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


@pytest.fixture(scope="module")
def responses(fleet, tmp_path_factory):
    """A window whose list_ops calls were served by the response cache 30% of the time
    (the simulator has no response cache: calls are marked so after the fact)."""
    import random

    from contracts.spans import SPAN_CALL, SPAN_TASK, Attr
    from experiments.window import load_estimator_window
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    tmp = tmp_path_factory.mktemp("responses")
    logging = _policy("{response: {enabled: true}}")
    spans = list(simulate_spans(logging, fleet, WorkloadShape(tasks=2000, seed=5)))
    family = {s["attributes"][Attr.TASK_ID]: s["attributes"][Attr.FAMILY]
              for s in spans if s["name"] == SPAN_TASK}
    rng = random.Random(1)
    hits, calls = {}, {}  # task -> list_ops calls served by the cache, list_ops calls
    for s in spans:
        a = s["attributes"]
        if s["name"] != SPAN_CALL or family[a[Attr.TASK_ID]] != "list_ops":
            continue
        calls[a[Attr.TASK_ID]] = calls.get(a[Attr.TASK_ID], 0) + 1
        if rng.random() < 0.3:
            a[Attr.CACHE] = "response"
            hits[a[Attr.TASK_ID]] = hits.get(a[Attr.TASK_ID], 0) + 1
    write_spans(iter(spans), tmp / "spans.jsonl")
    ingest_paths([tmp / "spans.jsonl"], tmp / "tel")
    window = load_estimator_window(tmp / "tel", fleet=fleet)
    return logging, window, ReplayContext(window, fit_outcome_models(window)), hits, calls


def test_each_tasks_influence_on_the_response_hit_rate(responses):
    """Its response calls minus the rate x its calls, over the family's calls: a resample
    of the tasks moves the rate as re-measuring it would."""
    _, window, _, hits, calls = responses
    assert set(window.response_hit_rate) == set(window.response_influence) == {"list_ops"}
    rate = window.response_hit_rate["list_ops"]
    assert rate == pytest.approx(sum(hits.values()) / sum(calls.values()))
    expected = np.array([(hits.get(t, 0) - rate * calls.get(t, 0)) / sum(calls.values())
                         for t in window.task_ids.tolist()])
    np.testing.assert_allclose(window.response_influence["list_ops"], expected, atol=1e-12)
    rows = np.arange(0, window.n, 3)
    np.testing.assert_array_equal(window.subset(rows).response_influence["list_ops"],
                                  expected[rows])


def test_the_response_hit_rates_error_widens_the_interval(responses, monkeypatch):
    """A policy that caches list_ops' responses is priced at the measured hit rate; its
    sampling error enters the interval: across resamples, the term's spread of the cost is
    what the rate's own standard error (tasks as clusters of calls) times the cost's slope
    in the rate gives. Excluding the family takes the term away."""
    from experiments.estimator import bootstrap_weights

    logging, window, ctx, hits, calls = responses
    values = replay_policy(logging, ctx)
    influence = price_influence(logging, ctx, values)
    assert np.abs(influence.sum(axis=0)).max() < 1e-6 * max(1.0, np.abs(influence).max())
    excluded = _policy("{response: {enabled: true, exclude_families: [list_ops]}}")
    assert not price_influence(excluded, ctx, replay_policy(excluded, ctx)).any()

    uncached = _policy("{}")
    rate = window.response_hit_rate["list_ops"]
    slope = (values.cost.sum() - replay_policy(uncached, ctx).cost.sum()) / rate
    total = sum(calls.values())
    rate_se = np.sqrt(sum((hits.get(t, 0) - rate * c) ** 2 for t, c in calls.items())) / total
    W = bootstrap_weights(window.n, 2000, 4).astype(np.float64)
    cost = TaskValues.COLUMN_NAMES.index("cost")
    assert slope < 0
    assert (W @ influence[:, cost]).std() == pytest.approx(abs(slope) * rate_se, rel=0.1)

    baseline = estimate(uncached, window, context=ctx, bootstrap=300, seed=3)
    with_term = compare(estimate(logging, window, context=ctx, bootstrap=300, seed=3),
                        baseline)
    monkeypatch.setattr(window, "response_influence", {})
    without = compare(estimate(logging, window, context=ctx, bootstrap=300, seed=3), baseline)
    assert with_term.cost_per_green_pr.point == pytest.approx(without.cost_per_green_pr.point)
    assert with_term.cost_per_green_pr.width > without.cost_per_green_pr.width
