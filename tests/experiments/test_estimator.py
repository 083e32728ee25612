"""The estimator pinned on hand-computed cases, off-policy truth, and unobserved combos."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from experiments.estimator import compare, estimate
from experiments.outcomes import OutcomeModels
from experiments.replay import ReplayContext, replay_policy
from experiments.window import build_window

TWO_TIER_FLEET = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: s, economics: {gpus: 1, usd_per_gpu_hour: 3.6, prefill_tokens_per_s: 1, decode_tokens_per_s: 1}}]}
    - {name: L, rank: 1, model: l, variants: [{name: bf16, weights: l, economics: {gpus: 10, usd_per_gpu_hour: 3.6, prefill_tokens_per_s: 1, decode_tokens_per_s: 1}}]}
"""


def _frames(n: int):
    """n tasks, each with one S attempt of one call: 3 input + 1 output token."""
    ids = [f"t{i}" for i in range(n)]
    tasks = pd.DataFrame({"task_id": ids, "family": "f", "outcome": "failed",
                          "verifier_passed": False, "review_accepted": pd.NA,
                          "verifier_cost_usd": 0.0, "features": "{}"})
    attempts = pd.DataFrame({"task_id": ids, "attempt": 1, "tier": "S", "variant": "bf16",
                             "adapter": pd.NA, "passed": False, "purpose": "serve",
                             "propensity": np.nan})
    calls = pd.DataFrame({"task_id": ids, "attempt": 1, "tier": "S", "variant": "bf16",
                          "input_tokens": 3, "output_tokens": 1, "cached_input_tokens": 0,
                          "cache": "miss", "cost_usd": np.nan, "parent_span_id": pd.NA})
    return tasks, attempts, calls


def _known_model(p_by_combo: list[float], n_hist: int) -> OutcomeModels:
    """An outcome model with exactly these pass rates per combination (no features)."""
    logit = np.array([math.log(p / (1 - p)) for p in p_by_combo])
    fold = {"w_task": np.zeros(0), "w_combo": logit, "W_inter": np.zeros((len(logit), 0)),
            "w_hist": np.zeros(n_hist), "w_att": 0.0, "b": 0.0, "a": -1.0, "c": 0.0}
    return OutcomeModels(None, 0, len(logit), n_hist, None, [fold], 0, None)


def test_two_tier_cascade_matches_hand_computation():
    from contracts.manifest import load_fleet
    from policies.policy import load_policy

    fleet = load_fleet(TWO_TIER_FLEET)
    window = build_window(*_frames(10), fleet)
    # Attempts spend exactly their tokens (no spread): caps bind as hand-computed below.
    window.attempt_cv, window.spend_scale = 0.0, None
    # $1 per GPU-second and 1 token/s: S costs 4 * 1 = $4 an attempt, L costs 4 * 10 = $40.
    c_s, c_l = 4.0 * 1 * 3.6 / 3600, 4.0 * 10 * 3.6 / 3600
    p_s, p_l = 0.7, 0.9
    # The model alone (no per-state corrections from the window's verdicts): exact p's.
    ctx = ReplayContext(window, _known_model([p_s, p_l], 2), min_support=0,
                        evidence_prior=math.inf)
    cascade = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: t, created: 2026-01-01T00:00:00Z}
spec: {routing: {router: fixed, escalation: [S, L], max_attempts: 2}}
""")
    values = replay_policy(cascade, ctx, doubly_robust=False)
    q = 1 - p_s
    assert values.cost == pytest.approx(np.full(10, c_s + q * c_l))
    assert values.green == pytest.approx(np.full(10, p_s + q * p_l))
    assert values.fpy == pytest.approx(np.full(10, p_s))
    assert values.attempts == pytest.approx(np.full(10, 1 + q))
    est = estimate(cascade, window, context=ctx, bootstrap=20)
    assert est.cost_per_green_pr.point == pytest.approx((c_s + q * c_l) / (p_s + q * p_l))
    # A cap of one attempt stops the cascade at S.
    capped = cascade.evolve(author="t", guardrails={"max_attempts_per_task": 1})
    v1 = replay_policy(capped, ctx, doubly_robust=False)
    assert v1.cost == pytest.approx(np.full(10, c_s))
    assert v1.green == pytest.approx(np.full(10, p_s))
    # A spend cap that S's attempt reaches refuses L: the failures end budget_exceeded.
    usd_cap = cascade.evolve(author="t", guardrails={"max_usd_per_task": c_s * 0.5})
    v2 = replay_policy(usd_cap, ctx, doubly_robust=False)
    assert v2.cost == pytest.approx(np.full(10, c_s))
    assert v2.budget_exceeded == pytest.approx(np.full(10, q))
    # One S has not reached a cap of 1.5 S: as at the gateway, L runs (and crosses it).
    loose = cascade.evolve(author="t", guardrails={"max_usd_per_task": c_s * 1.5})
    v3 = replay_policy(loose, ctx, doubly_robust=False)
    assert v3.cost == pytest.approx(np.full(10, c_s + q * c_l))
    assert v3.budget_exceeded == pytest.approx(np.zeros(10))


def _truth(policy, fleet, tmp_path, seed):
    """What the policy really yields: simulate it on the same workload, measure the result."""
    from experiments_testkit import simulate_window

    _, w = simulate_window(policy, fleet, tmp_path, tasks=12000, seed=seed)
    return _truth_of_window(w)


def _truth_of_window(w):
    ctx_cost = w.cost_nocache[np.arange(w.n)[:, None], np.maximum(w.logged_combo, 0)]
    spend = (np.where(w.logged_combo >= 0, ctx_cost, 0.0).sum()
             + (w.verifier_per_attempt * w.logged_len).sum())
    first = w.logged_passed[:, 0]
    return {"green_rate": w.green.mean(), "fpy": first.mean(),
            "cost_per_green": spend / w.green.sum()}


def test_off_policy_estimate_recovers_truth(logged, models, fleet, tmp_path):
    """Logged by a score router (30% exploration); judged: a fixed start at M."""
    _, window = logged
    from experiments_testkit import POLICY_YAML

    from policies.policy import load_policy

    active = load_policy(POLICY_YAML)
    routing = active.spec.routing.model_copy(update={
        "router": "fixed", "escalation": ["M", "L"], "max_attempts": 2, "weights": {}, "thresholds": [],
        "exploration_rate": 0.0})
    candidate = active.evolve(author="t", routing=routing)
    est = estimate(candidate, window, fleet, models, bootstrap=200, seed=1, level=0.95)
    truth = _truth(candidate, fleet, tmp_path, seed=99)
    n = window.n
    assert est.support == 1.0
    # Truth is measured on a finite sample too: allow its own sampling error.
    green_tol = 2 * math.sqrt(truth["green_rate"] * (1 - truth["green_rate"]) / 12000)
    assert est.green_prs.low / n - green_tol <= truth["green_rate"] <= est.green_prs.high / n + green_tol
    assert est.fpy.low - 0.01 <= truth["fpy"] <= est.fpy.high + 0.01
    assert est.cost_per_green_pr.point == pytest.approx(truth["cost_per_green"], rel=0.08)
    # Reading the logged window as if it were the candidate's is far off; the estimate is not.
    logged_truth = _truth_of_window(window)
    assert (abs(est.cost_per_green_pr.point - truth["cost_per_green"])
            < 0.5 * abs(logged_truth["cost_per_green"] - truth["cost_per_green"]))


def test_unobserved_combination_is_never_confidently_better(logged, models, fleet, logging_policy):
    _, window = logged
    # int8 on M is cheaper per token and was never logged.
    candidate = logging_policy.evolve(author="t", quantization={"M": "int8"})
    active_est = estimate(logging_policy, window, fleet, models, bootstrap=100)
    est = estimate(candidate, window, fleet, models, bootstrap=100)
    assert est.support < 0.9
    assert active_est.support == 1.0
    deltas = compare(est, active_est)
    # Its point estimate looks cheaper (the model extrapolates), but the interval spans
    # "much worse": it can never pass as confidently better or non-inferior.
    assert deltas.cost_per_green_pr.point < 0
    assert deltas.cost_per_green_pr.high > 0
    assert deltas.fpy.low < -0.1  # the tasks routed to M would fail first pass
    assert any("never observed" in note for note in est.notes)


def test_replay_start_tiers_agree_with_policies_routing(logged, models, logging_policy):
    from experiments.replay import _start_indices
    from policies.routing import resolve_routing, start_index

    _, window = logged
    ctx = ReplayContext(window, models)
    for f, family in enumerate(window.families):
        rows = ctx.family_rows[f]
        k = _start_indices(ctx, resolve_routing(logging_policy, family), rows)
        expected = [start_index(resolve_routing(logging_policy, family), window.raw_features[r])
                    for r in rows]
        assert k.tolist() == expected


def test_vectorised_outcome_model_equals_predict_proba(logged, models):
    _, window = logged
    frame = window.attempts_frame.iloc[:500]
    task_x = window.model_features[frame["task"].to_numpy()]
    hist = frame[[f"hist_{i}" for i in range(models.n_hist)]].to_numpy(dtype=float)
    attempt = frame["attempt"].to_numpy(dtype=float)
    combo = frame["combo"].to_numpy()
    reference = models.predict(task_x, combo, hist, attempt)
    logits = models.task_combo_logits(task_x)[:, np.arange(len(frame)), combo]
    shift = np.stack([models.history_shift(h, int(a)) for h, a in zip(hist, attempt)], axis=1)
    assert models.calibrate(logits + shift) == pytest.approx(reference, abs=1e-12)


def test_outcome_models_accept_the_frames_of_the_nightly_interface(logged, fleet):
    from experiments.outcomes import fit_outcome_models
    from experiments.window import load_estimator_window

    spans, window = logged
    root = spans.parent / "tel-11"
    tasks, attempts, _calls = load_estimator_window(root)
    models = fit_outcome_models(tasks, attempts, fleet)
    assert models.n_train == len(window.attempts_frame)
    assert 0.0 < models.brier < 0.25


def test_on_policy_estimate_reproduces_the_logged_outcomes(fleet, tmp_path):
    """With no exploration the doubly-robust estimate of the logging policy is its log."""
    from experiments_testkit import simulate_window

    from experiments.outcomes import fit_outcome_models
    from policies.policy import load_policy

    policy = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: t, created: 2026-11-01T00:00:00Z}
spec: {routing: {router: fixed, escalation: [S, M, L], max_attempts: 3}}
""")
    _, window = simulate_window(policy, fleet, tmp_path, tasks=800, seed=5)
    ctx = ReplayContext(window, fit_outcome_models(window))
    values = replay_policy(policy, ctx)
    assert values.green.sum() == pytest.approx(window.green.sum())
    assert values.fpy.mean() == pytest.approx(window.logged_passed[:, 0].mean())
    assert values.attempts.sum() == pytest.approx(window.logged_len.sum())
    assert (values.dr_weight == 1.0).all()
