"""The estimator's window prices counterfactual attempts on API-priced tiers from their list
prices: per token (input, cached input, output) and per request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts.manifest import load_fleet
from experiments.window import build_window

FLEET = load_fleet("""
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  pricing: {cached_input_discount: 0.9}
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: w/s, economics: {gpus: 1, usd_per_gpu_hour: 3.6, prefill_tokens_per_s: 1000, decode_tokens_per_s: 1000}}]}
    - {name: X, rank: 1, model: vendor-x, variants: [{name: api, economics: {usd_per_1m_input_tokens: 3, usd_per_1m_cached_input_tokens: 0.3, usd_per_1m_output_tokens: 15, usd_per_request: 0.002}}]}
""")


def _frames():
    """Two tasks served on S: each one attempt of two calls (1,000 in, 100 out per call); the
    prefix cache ran on S with half the input tokens cached on task b's calls."""
    tasks = pd.DataFrame({"task_id": ["a", "b"], "family": "f", "outcome": "green",
                          "verifier_passed": True, "review_accepted": pd.NA,
                          "verifier_cost_usd": 0.0, "features": "{}"})
    attempts = pd.DataFrame({"task_id": ["a", "b"], "attempt": 1, "tier": "S",
                             "variant": "bf16", "adapter": pd.NA, "passed": True,
                             "purpose": "serve", "propensity": 1.0, "cost_usd": np.nan})
    calls = pd.DataFrame({"task_id": ["a", "a", "b", "b"], "attempt": 1, "tier": "S",
                          "variant": "bf16", "adapter": pd.NA, "input_tokens": 1000,
                          "output_tokens": 100, "cached_input_tokens": [0, 0, 500, 500],
                          "cache": ["miss", "miss", "prefix", "prefix"], "cost_usd": np.nan,
                          "parent_span_id": pd.NA})
    return tasks, attempts, calls


def test_api_tier_counterfactual_pays_tokens_cached_tokens_and_requests():
    w = build_window(*_frames(), FLEET)
    x = w.combo_index("X", None, None)
    per_attempt = 2000 * 3e-6 + 200 * 15e-6 + 2 * 0.002  # two calls, two requests
    assert w.cost_nocache[:, x] == pytest.approx([per_attempt, per_attempt])
    share = w.cached_share["S"]  # X never ran the prefix cache: the pooled share
    # S's share is over all its calls while the cache ran, misses included: 1,000 of 4,000
    # input tokens (over the hits alone it was 0.5, which over-stated the saving).
    assert share == pytest.approx(0.25)
    with_prefix = per_attempt - 2000 * share * (3e-6 - 0.3e-6)
    assert w.cost_prefix[:, x] == pytest.approx([with_prefix, with_prefix])


def test_observed_self_hosted_cells_cost_what_they_were_charged():
    w = build_window(*_frames(), FLEET)
    s = w.combo_index("S", None, None)
    p = 1e-6  # $3.60/GPU-hour at 1,000 tokens/s
    full = 2 * (1000 * p + 100 * p)
    b_charged = 2 * (500 * p + 500 * p * 0.1 + 100 * p)
    assert w.cost_nocache[:, s] == pytest.approx([full, full])
    # Prefix caching ran on S: the charge is the price with the cache (task a: misses).
    assert w.cost_prefix[:, s] == pytest.approx([full, b_charged])
