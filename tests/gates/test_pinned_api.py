"""The pinned-weights check of an API-priced tier: nothing to pin, said so, not a failure."""

from __future__ import annotations

from pathlib import Path

from contracts.manifest import load_fleet, save_fleet, sha256_file
from gates.gates import pinned_weights_gate
from gates.runner import check_pinned_files
from policies.policy import load_policy

FLEET = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: w/s, files: {model.bin: '%s'}, economics: {gpus: 1, usd_per_gpu_hour: 2, prefill_tokens_per_s: 100, decode_tokens_per_s: 100}}]}
    - {name: X, rank: 1, model: vendor-x, variants: [{name: api, economics: {usd_per_request: 0.01}}]}
"""
POLICY = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: t, created: 2026-11-01T00:00:00Z}
spec: {routing: {router: fixed, escalation: [S, X], max_attempts: 2}}
"""


def _fleet(tmp_path: Path):
    weights = tmp_path / "w" / "s"
    weights.mkdir(parents=True)
    (weights / "model.bin").write_bytes(b"weights")
    fleet = load_fleet(FLEET % sha256_file(weights / "model.bin"))
    save_fleet(fleet, tmp_path / "fleet.yaml")
    return fleet


def test_an_api_tier_has_no_pins_and_passes(tmp_path):
    fleet = _fleet(tmp_path)
    checks = check_pinned_files(load_policy(POLICY), fleet, tmp_path)
    by_tier = {c.tier: c for c in checks}
    assert set(by_tier) == {"S", "X"} and all(c.ok for c in checks)
    assert by_tier["X"].path == "api-priced, no weights to pin"
    assert by_tier["X"].expected is None and by_tier["X"].problem is None
    gate = pinned_weights_gate(checks)
    assert gate.phase.value == "PASSED"
    assert "X/api" in gate.stats["variants"]


def test_the_self_hosted_tier_beside_it_is_still_checked(tmp_path):
    fleet = _fleet(tmp_path)
    (tmp_path / "w" / "s" / "model.bin").write_bytes(b"tampered")
    checks = check_pinned_files(load_policy(POLICY), fleet, tmp_path)
    bad = [c for c in checks if not c.ok]
    assert [c.tier for c in bad] == ["S"] and "!= manifest" in bad[0].problem
    assert pinned_weights_gate(checks).phase.value == "FAILED"
