"""`autopilot fleet verify [--fleet F]` checks every pin and names extra files (issue 14,
defect 3): exit 0 when every variant and adapter holds exactly its pinned files, exit 1
naming each mismatched, missing and extra file; API-priced variants have nothing to check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from contracts.manifest import load_fleet, save_fleet
from controlplane.cli import cli
from serving.testing import make_stub_fleet

REFERENCE_FLEET = Path(__file__).resolve().parents[2] / "training" / "fleet" / "fleet.yaml"


def verify(*args, as_json=False, state=None):
    head = (["--state-dir", str(state)] if state else []) + (["--json"] if as_json else [])
    return CliRunner().invoke(cli, [*head, "fleet", "verify", *args], catch_exceptions=False)


@pytest.fixture
def fleet(tmp_path):
    return make_stub_fleet(tmp_path / "fleet", ("S", "M"), ("bf16", "int4"),
                           adapters={"S": ["list-v1"]})


def test_a_clean_fleet_verifies(fleet):
    result = verify("--fleet", str(fleet))
    assert result.exit_code == 0, result.output
    assert "every pin holds" in result.output
    assert "5 variant(s)/adapter(s)" in result.output
    data = json.loads(verify("--fleet", str(fleet), as_json=True).output)
    assert data["ok"] and data["totals"]["failing"] == 0
    assert [c["target"] for c in data["checked"]] == [
        "S/bf16", "S/bf16+list-v1", "S/int4", "M/bf16", "M/int4"]


def test_problems_are_named_per_variant_and_adapter(fleet):
    root = fleet.parent
    (root / "models" / "S" / "bf16" / "model.safetensors.index.json").write_text("{}")
    (root / "models" / "S" / "bf16" / "model-00002.safetensors").write_bytes(b"x")
    (root / "adapters" / "S" / "list-v1" / "adapter_config.json").write_text("{}")
    (root / "models" / "M" / "int4" / "model.safetensors").write_bytes(b"swapped")
    (root / "models" / "M" / "bf16" / "config.json").unlink()
    result = verify("--fleet", str(fleet))
    assert result.exit_code == 1
    out = result.output
    for name in ("model.safetensors.index.json", "model-00002.safetensors",
                 "adapter_config.json"):
        assert any(line.strip().startswith("extra") and name in line
                   for line in out.splitlines()), out
    assert any(line.strip().startswith("mismatch") and "M/int4/model.safetensors" in line
               for line in out.splitlines()), out
    assert any(line.strip().startswith("missing") and "M/bf16/config.json" in line
               for line in out.splitlines()), out
    assert "1 mismatched, 1 missing, 3 extra file(s)" in out

    data = json.loads(verify("--fleet", str(fleet), as_json=True).output)
    assert not data["ok"]
    by = {c["target"]: c for c in data["checked"]}
    assert [Path(p).name for p in by["S/bf16"]["extra"]] == [
        "model-00002.safetensors", "model.safetensors.index.json"]
    assert [Path(p).name for p in by["S/bf16+list-v1"]["extra"]] == ["adapter_config.json"]
    assert [Path(p).name for p in by["M/int4"]["mismatched"]] == ["model.safetensors"]
    assert [Path(p).name for p in by["M/bf16"]["missing"]] == ["config.json"]
    assert by["S/int4"]["ok"] and data["totals"] == {
        "targets": 5, "failing": 4, "files_pinned": 9, "mismatched": 1, "missing": 1,
        "extra": 3, "unpinned": 0}


def test_api_priced_variants_say_so(fleet):
    manifest = load_fleet(fleet)
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["tiers"].append({"name": "X", "rank": 9, "model": "hosted", "variants": [
        {"name": "api", "economics": {"usd_per_request": 0.01}}]})
    save_fleet(type(manifest).model_validate(data), fleet)
    result = verify("--fleet", str(fleet))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("X/api"))
    assert "API-priced: no weights to pin, nothing checked" in line
    checked = json.loads(verify("--fleet", str(fleet), as_json=True).output)["checked"]
    assert checked[-1] == {**checked[-1], "target": "X/api", "api_priced": True, "ok": True,
                           "directory": None, "pinned": 0}


def test_the_state_dirs_fleet_is_the_default(tmp_path):
    fleet = make_stub_fleet(tmp_path / "full")  # tiers S, M, L: the starter policy's
    state = tmp_path / "state"
    assert verify(state=state).exit_code != 0  # no state dir yet: run init first
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "init", "--fleet", str(fleet)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = verify(state=state)
    assert result.exit_code == 0, result.output
    assert str(state / "fleet.yaml") in result.output and "every pin holds" in result.output


def test_the_committed_reference_fleet_verifies():
    result = verify("--fleet", str(REFERENCE_FLEET))
    assert result.exit_code == 0, result.output
    assert "every pin holds" in result.output
