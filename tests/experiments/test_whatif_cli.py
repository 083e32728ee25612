"""`autopilot whatif` on a tiny simulated window, from raw span files, with no fleet running."""

from __future__ import annotations

import json

from click.testing import CliRunner

from controlplane.cli import cli
from policies.policy import load_policy, validate_against_fleet


def test_whatif_writes_ranked_candidates(tmp_path, fleet, fleet_path, logging_policy):
    from experiments_testkit import POLICY_YAML, simulate_window

    spans, _ = simulate_window(logging_policy, fleet, tmp_path, tasks=600, seed=3)
    policy_file = tmp_path / "active.yaml"
    policy_file.write_text(POLICY_YAML)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "--state-dir", str(tmp_path / "state"), "whatif", "--telemetry", str(spans),
        "--fleet", str(fleet_path), "--policy", str(policy_file), "--lever", "routing",
        "--out", str(out), "--candidates", "3", "--trials", "2", "--per-trial", "8",
        "--executor", "inline"])
    assert result.exit_code == 0, result.output
    assert "candidates (" in result.output and "active policy on this window" in result.output
    assert "wrote" in result.output
    files = sorted(out.glob("candidate-*.yaml"))
    assert 1 <= len(files) <= 3
    for f in files:
        p = load_policy(f)
        validate_against_fleet(p, fleet)
        assert p.metadata.parent_version == 3
    summary = json.loads((out / "whatif.json").read_text())
    assert len(summary["candidates"]) == len(files)
    assert {"green_prs_rel", "fpy_abs", "cost_per_green_pr_rel"} <= set(
        summary["candidates"][0]["deltas"])


def test_whatif_refuses_a_missing_fleet_file(tmp_path):
    result = CliRunner().invoke(cli, ["whatif", "--telemetry", str(tmp_path), "--fleet",
                                      str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    assert "nope.yaml" in result.output
