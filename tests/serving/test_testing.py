"""The fixture fleets (serving.testing) and the one tier table they price by."""

from __future__ import annotations

from pathlib import Path

from contracts.manifest import load_fleet, verify_files
from serving.testing import TINY_ECONOMICS, make_stub_fleet, tiny_manifest

STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "fleet.yaml"


def test_the_starter_fleet_states_the_same_tier_table():
    starter = load_fleet(STARTER)
    for tier in starter.tiers:
        e = starter.economics(tier.name)
        assert {k: getattr(e, k) for k in TINY_ECONOMICS[tier.name]} == TINY_ECONOMICS[tier.name]


def test_stub_fleet_pins_every_placeholder_file(tmp_path):
    path = make_stub_fleet(tmp_path, ("S", "M"), ("bf16", "int4"), adapters={"S": ["a-v1"]})
    fleet = load_fleet(path)
    assert [t.name for t in fleet.tiers] == ["S", "M"]
    pins = set()
    for tier in fleet.tiers:
        assert tier.default_variant == "bf16"
        assert fleet.economics(tier.name).decode_tokens_per_s == \
            TINY_ECONOMICS[tier.name]["decode_tokens_per_s"]
        for variant in tier.variants:
            assert verify_files(tmp_path / variant.weights, variant.files) == []
            pins |= set(variant.files.values())
            for adapter in variant.adapters:
                assert verify_files(tmp_path / adapter.path, adapter.files) == []
                pins |= set(adapter.files.values())
    assert len(pins) == 2 * 4 + 1  # every placeholder differs: tampering one is caught
    assert [a.name for a in fleet.tier("S").variant("bf16").adapters] == ["a-v1"]
    assert fleet.tier("S").variant("int4").adapters == ()


def test_tiny_manifest_has_an_option_for_every_lever():
    fleet = tiny_manifest()
    assert [(t.name, [v.name for v in t.variants]) for t in fleet.tiers] == [
        ("S", ["bf16", "int8"]), ("M", ["bf16", "int8"]), ("L", ["bf16"])]
    assert fleet.tier("S").variant("bf16").adapters[0].family == "list_ops"
    assert fleet.economics("L").gpus == TINY_ECONOMICS["L"]["gpus"]
    assert tiny_manifest("x").content_hash == fleet.content_hash  # the name is metadata
