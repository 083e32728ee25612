"""Pinned-weight checks, engine arguments and deployment planning (no engine started)."""

import json

import pytest

from contracts.manifest import (
    Adapter,
    Economics,
    FleetManifest,
    FleetSpec,
    Tier,
    Variant,
    save_fleet,
    sha256_file,
)
from policies.policy import Policy
from serving.engine import (
    EngineOptions,
    PinnedWeightsMismatch,
    engine_kwargs,
    model_dtype,
    model_max_len,
    verify_variant,
)
from serving.tiers import DeploymentKey, policy_tiers, required_deployments

ECON = Economics(gpus=1, usd_per_gpu_hour=1, prefill_tokens_per_s=1, decode_tokens_per_s=1)


@pytest.fixture()
def fleet(tmp_path):
    model = tmp_path / "models" / "S"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    (model / "model.safetensors").write_bytes(b"weights")
    adapter = tmp_path / "adapters" / "a1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    pins = {p.name: sha256_file(p) for p in model.iterdir()}
    variant = Variant(name="bf16", weights="models/S", files=pins, economics=ECON,
                      adapters=(Adapter(name="a1", path="adapters/a1", files={
                          "adapter_model.safetensors": sha256_file(
                              adapter / "adapter_model.safetensors")}),))
    int8 = Variant(name="int8", weights="models/S", files=pins, economics=ECON)
    tiers = (Tier(name="S", rank=0, model="s", variants=(variant, int8)),
             Tier(name="M", rank=1, model="m", variants=(int8.model_copy(),)))
    path = save_fleet(FleetManifest(spec=FleetSpec(tiers=tiers)), tmp_path / "fleet.yaml")
    return path, FleetManifest.model_validate(
        {"spec": {"tiers": [t.model_dump() for t in tiers]}})


def test_verified_variant_resolves_paths_and_digests(fleet):
    path, manifest = fleet
    pinned = verify_variant(manifest, path.parent, "S")
    assert pinned.model_dir == path.parent / "models" / "S" and pinned.variant == "bf16"
    assert pinned.adapter_dirs == {"a1": path.parent / "adapters" / "a1"}
    assert len(pinned.weights_digest) == 64 and pinned.adapter_digest("a1") != ""
    assert pinned.adapter_digest(None) == ""


@pytest.mark.parametrize("victim", ["models/S/model.safetensors",
                                    "adapters/a1/adapter_model.safetensors"])
def test_a_tampered_or_missing_file_is_refused_by_name(fleet, victim):
    path, manifest = fleet
    target = path.parent / victim
    target.write_bytes(b"tampered")
    with pytest.raises(PinnedWeightsMismatch) as err:
        verify_variant(manifest, path.parent, "S")
    assert str(target) in str(err.value) and "!= manifest" in str(err.value)
    target.unlink()
    with pytest.raises(PinnedWeightsMismatch, match="missing"):
        verify_variant(manifest, path.parent, "S")


def test_engine_kwargs_follow_policy_config_and_platform(fleet):
    path, manifest = fleet
    pinned = verify_variant(manifest, path.parent, "S")
    opts = EngineOptions(seed=7)
    cpu = engine_kwargs(pinned, prefix_caching=True, options=opts, on_cpu=True)
    assert cpu["enable_prefix_caching"] is True and cpu["dtype"] == "bfloat16"
    assert cpu["seed"] == 7 and cpu["block_size"] == 32 and cpu["enable_lora"] is True
    assert cpu["max_loras"] == 1 and "gpu_memory_utilization" not in cpu
    assert cpu["generation_config"] == "vllm"
    gpu = engine_kwargs(verify_variant(manifest, path.parent, "S", "int8"),
                        prefix_caching=False, options=opts, on_cpu=False)
    assert gpu["enable_prefix_caching"] is False and "block_size" not in gpu
    assert "enable_lora" not in gpu and gpu["gpu_memory_utilization"] == opts.gpu_memory_utilization
    assert model_dtype(path.parent / "nowhere") == "auto"


def test_context_length_is_capped_at_the_model_positions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    assert model_max_len(tmp_path, 256) == 128
    assert model_max_len(tmp_path, 64) == 64
    assert model_max_len(tmp_path / "nowhere", 256) == 256


def test_required_deployments_cover_every_routable_tier(fleet):
    _, manifest = fleet
    p = Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"escalation": ["M"], "families": {"x": {"escalation": ["S", "M"]}}},
                 "quantization": {"S": "int8"}, "cache": {"prefix": {"M": True}}}})
    assert policy_tiers(p) == ["M", "S"]
    assert required_deployments(p, manifest) == [DeploymentKey("M", "int8", True),
                                                 DeploymentKey("S", "int8", False)]
    assert DeploymentKey("S", "int8", False).app_name == "tier-S-int8-nopc"
