"""An API-priced tier cannot be served by the local engine: refused by name, never loaded."""

from __future__ import annotations

import sys

import pytest

from contracts.manifest import load_fleet, save_fleet
from policies.policy import load_policy
from serving import tiers
from serving.engine import EngineOptions
from serving.tiers import DeploymentKey, TierStartFailed, deploy_tiers, required_deployments

FLEET = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: w/s, economics: {gpus: 1, usd_per_gpu_hour: 2, prefill_tokens_per_s: 100, decode_tokens_per_s: 100}}]}
    - {name: X, rank: 1, model: vendor-x, variants: [{name: api, economics: {usd_per_1m_input_tokens: 3, usd_per_1m_output_tokens: 15}}]}
"""


def policy(escalation: str, version: int = 1):
    return load_policy(f"""
apiVersion: autopilot/v1
kind: Policy
metadata: {{version: {version}, author: t, created: 2026-11-01T00:00:00Z}}
spec: {{routing: {{router: fixed, escalation: [{escalation}], max_attempts: 2}}}}
""")


def test_required_deployments_refuse_an_api_tier_by_name():
    fleet = load_fleet(FLEET)
    assert [k.tier for k in required_deployments(policy("S"), fleet)] == ["S"]
    with pytest.raises(TierStartFailed) as exc:
        required_deployments(policy("S, X"), fleet)
    assert isinstance(exc.value, tiers.ApiTierNotServable)
    assert exc.value.tier == "X" and "tier 'X' (variant 'api') is API-priced" in str(exc.value)
    assert "cannot serve it" in str(exc.value)


def _never(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} was called: the refusal came too late")
    return refuse


def test_deploy_tiers_refuses_before_serve_is_touched(tmp_path, monkeypatch):
    # Were the refusal missing, Serve would start a local Ray here: never let it.
    monkeypatch.setattr(tiers, "running_apps", _never("running_apps"))
    monkeypatch.setattr(tiers, "tier_application", _never("tier_application"))
    path = save_fleet(load_fleet(FLEET), tmp_path / "fleet.yaml")
    ray_loaded = "ray" in sys.modules
    with pytest.raises(TierStartFailed, match="tier 'X' .*API-priced"):
        deploy_tiers(path, [DeploymentKey("X", "api", False)], EngineOptions())
    if not ray_loaded:
        assert "ray.serve" not in sys.modules  # refused before Serve was even imported


def test_start_fleet_refuses_before_ray_starts(tmp_path, monkeypatch):
    import ray

    from serving.fleet import FleetStartError, start_fleet
    from store import Store

    monkeypatch.setattr(ray, "init", _never("ray.init"))

    path = save_fleet(load_fleet(FLEET), tmp_path / "fleet.yaml")
    url = f"sqlite:///{tmp_path / 'autopilot.db'}"
    with Store.open(url) as store:
        store.put_policy(policy("S, X", version=2))
    was_running = ray.is_initialized()
    with pytest.raises(FleetStartError, match="tier 'X' .*API-priced"):
        start_fleet(path, store_url=url, policy_version=2)
    assert ray.is_initialized() == was_running
