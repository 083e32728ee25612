"""The pinned_weights gate names a file nobody pinned (issue 14, defect 3): the engine would
load it, so a candidate whose weights or adapter directory holds one is FAILED and the
evidence bundle lists it."""

from __future__ import annotations

from gates_testkit import make_policy

from contracts.manifest import EXTRA_FILE, load_fleet
from gates.gates import Phase, pinned_weights_gate
from gates.runner import check_pinned_files


def test_an_unlisted_index_in_a_weights_directory_fails_the_gate(fleet_path):
    fleet = load_fleet(fleet_path)
    cand = make_policy(2, quantization={"M": "int4"})
    assert pinned_weights_gate(check_pinned_files(cand, fleet, fleet_path.parent)).phase \
        is Phase.PASSED
    index = fleet_path.parent / "models" / "M" / "int4" / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"lm_head.weight": "model-00002.safetensors"}}')
    checks = check_pinned_files(cand, fleet, fleet_path.parent)
    [extra] = [c for c in checks if not c.ok]
    assert (extra.tier, extra.variant, extra.adapter) == ("M", "int4", None)
    assert extra.path == str(index) and extra.problem == EXTRA_FILE
    result = pinned_weights_gate(checks)
    assert result.phase is Phase.FAILED and str(index) in result.message


def test_an_extra_file_beside_an_adapter_fails_the_gate(fleet_path):
    fleet = load_fleet(fleet_path)
    cand = make_policy(2, distillation={"list_ops": {"tier": "S", "adapter": "list-v1"}})
    adapter = fleet.tier("S").variant("bf16").adapters[0]
    extra = fleet_path.parent / adapter.path / "adapter_model.bin"
    extra.write_bytes(b"unpinned lora")
    [bad] = [c for c in check_pinned_files(cand, fleet, fleet_path.parent) if not c.ok]
    assert bad.adapter == "list-v1" and bad.path == str(extra)
    assert pinned_weights_gate(check_pinned_files(cand, fleet, fleet_path.parent)).phase \
        is Phase.FAILED
