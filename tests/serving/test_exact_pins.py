"""Weight pins are exact (issue 14, defect 3): a variant's weights directory, and each
adapter's, hold exactly their pinned files. Before the fix only the pinned files were
hashed, so an unlisted ``model.safetensors.index.json`` pointing at an unlisted shard made
vLLM load the unlisted weights while every check passed."""

from __future__ import annotations

import json

import pytest

from contracts.manifest import (
    EXTRA_FILE,
    check_fleet_pins,
    load_fleet,
    pin_problems,
    save_fleet,
    unpinned_files,
)
from serving.engine import PinnedWeightsMismatch, verify_variant
from serving.testing import make_stub_fleet


@pytest.fixture
def fleet(tmp_path):
    path = make_stub_fleet(tmp_path / "fleet", ("S", "M"), ("bf16", "int4"),
                           adapters={"S": ["list-v1"]})
    return path, load_fleet(path)


def smuggle_shard(model_dir):
    """The attack: an index that points the loader at a shard nobody pinned."""
    (model_dir / "model-00001-of-00001.safetensors").write_bytes(b"other weights")
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}))


def test_an_unlisted_index_and_shard_refuse_the_engine_naming_both(fleet):
    path, manifest = fleet
    verify_variant(manifest, path.parent, "S", "bf16")  # clean: starts
    model_dir = path.parent / "models" / "S" / "bf16"
    smuggle_shard(model_dir)
    with pytest.raises(PinnedWeightsMismatch) as refused:
        verify_variant(manifest, path.parent, "S", "bf16")
    named = {p for p, _problem in refused.value.problems}
    assert named == {str(model_dir / "model-00001-of-00001.safetensors"),
                     str(model_dir / "model.safetensors.index.json")}
    assert all(problem == EXTRA_FILE for _p, problem in refused.value.problems)
    assert "model.safetensors.index.json" in str(refused.value)
    verify_variant(manifest, path.parent, "S", "int4")  # another variant is not affected


def test_an_extra_file_beside_an_adapter_refuses_the_engine(fleet):
    path, manifest = fleet
    adapter_dir = path.parent / "adapters" / "S" / "list-v1"
    (adapter_dir / "adapter_config.json").write_text("{}")
    with pytest.raises(PinnedWeightsMismatch, match="adapter_config.json"):
        verify_variant(manifest, path.parent, "S", "bf16")


def test_nested_files_links_and_hidden_files_count(tmp_path):
    root = tmp_path / "w"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a")
    (root / "sub" / "b.bin").write_bytes(b"b")
    (root / ".hidden").write_bytes(b"h")
    (root / "sub" / "deep").mkdir()
    (root / "sub" / "deep" / "c.bin").write_bytes(b"c")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "shard.safetensors").write_bytes(b"s")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "empty-dir").mkdir()
    pins = {"a.bin": "0" * 64, "sub/b.bin": "0" * 64}
    assert unpinned_files(root, pins) == [".hidden", "linked", "sub/deep/c.bin"]
    assert unpinned_files(tmp_path / "absent", pins) == []
    kinds = [(p.kind, p.path.rsplit("/", 1)[-1]) for p in pin_problems(root, pins)]
    assert kinds == [("mismatch", "a.bin"), ("mismatch", "b.bin"), ("extra", ".hidden"),
                     ("extra", "linked"), ("extra", "c.bin")]
    assert [p.kind for p in pin_problems(root, pins, exact=False)] == ["mismatch", "mismatch"]


def test_check_fleet_pins_covers_every_variant_and_adapter(fleet):
    path, manifest = fleet
    reports = check_fleet_pins(manifest, path.parent)
    assert [r.target for r in reports] == ["S/bf16", "S/bf16+list-v1", "S/int4", "M/bf16",
                                           "M/int4"]
    assert all(r.ok for r in reports)
    smuggle_shard(path.parent / "models" / "M" / "int4")
    (path.parent / "adapters" / "S" / "list-v1" / "README.md").write_text("notes")
    (path.parent / "models" / "S" / "int4" / "model.safetensors").write_bytes(b"swapped")
    (path.parent / "models" / "S" / "bf16" / "config.json").unlink()
    bad = {r.target: sorted((p.kind, p.path.rsplit("/", 1)[-1]) for p in r.problems)
           for r in check_fleet_pins(manifest, path.parent) if not r.ok}
    assert bad == {
        "S/bf16": [("missing", "config.json")],
        "S/bf16+list-v1": [("extra", "README.md")],
        "S/int4": [("mismatch", "model.safetensors")],
        "M/int4": [("extra", "model-00001-of-00001.safetensors"),
                   ("extra", "model.safetensors.index.json")],
    }


def test_api_priced_variants_have_nothing_to_check_and_no_pins_is_a_problem(fleet):
    path, manifest = fleet
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["tiers"].append({
        "name": "X", "rank": 9, "model": "hosted-model", "variants": [
            {"name": "api", "economics": {"usd_per_1m_input_tokens": 1.0,
                                          "usd_per_1m_output_tokens": 2.0}}]})
    data["spec"]["tiers"][1]["variants"][0]["files"] = {}  # M/bf16 pins nothing
    changed = type(manifest).model_validate(data)
    save_fleet(changed, path)
    reports = {r.target: r for r in check_fleet_pins(load_fleet(path), path.parent)}
    api = reports["X/api"]
    assert api.api_priced and api.ok and api.directory is None and api.pinned == 0
    unpinned = reports["M/bf16"]
    assert unpinned.problems[0].kind == "unpinned"
    # Its files are on disk but pinned by nobody: each is named as extra too.
    assert {p.kind for p in unpinned.problems} == {"unpinned", "extra"}
