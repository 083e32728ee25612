"""`autopilot fleet show` (``fleet_rows``) on a fleet with an API-priced tier."""

from __future__ import annotations

import pytest

from contracts.manifest import load_fleet
from controlplane.views import fleet_rows

FLEET = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  pricing: {cached_input_discount: 0.9}
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: w/s, economics: {gpus: 1, usd_per_gpu_hour: 3.6, prefill_tokens_per_s: 1000, decode_tokens_per_s: 500}}]}
    - {name: X, rank: 1, model: vendor-x, variants: [{name: api, economics: {usd_per_1m_input_tokens: 3, usd_per_1m_output_tokens: 15, usd_per_request: 0.002}}]}
"""


def test_fleet_show_says_api_priced_no_weights_to_pin():
    rows = {r["tier"]: r for r in fleet_rows(load_fleet(FLEET))}
    assert set(rows["S"]) == set(rows["X"])  # one table, the same columns
    x, s = rows["X"], rows["S"]
    assert x["pinned_files"] == "api-priced, no weights to pin"
    assert x["pricing"] == "api" and s["pricing"] == "self-hosted"
    assert x["usd_per_1k_input"] == pytest.approx(0.003)
    assert x["usd_per_1k_cached_input"] == pytest.approx(0.0003)  # the fleet's 90% discount
    assert x["usd_per_1k_output"] == pytest.approx(0.015)
    assert x["usd_per_request"] == pytest.approx(0.002)
    assert x["gpus"] is None and x["replicas"] is None and x["capacity"] is None
    assert s["pinned_files"] == 0 and s["gpus"] == 1 and s["usd_per_request"] is None
