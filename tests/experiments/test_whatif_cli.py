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


def _numbers_only(value, path="") -> list[str]:
    """Paths of figures given as text ("+1.2% [..]") instead of numbers."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numbers_only(v, f"{path}.{k}")]
    if isinstance(value, str) and any(ch in value for ch in "%["):
        return [path]
    return []


def test_whatif_json_gives_numbers_and_the_table_shows_point_interval_and_support(
        tmp_path, fleet, fleet_path, logging_policy):
    from experiments_testkit import POLICY_YAML, simulate_window

    spans, _ = simulate_window(logging_policy, fleet, tmp_path, tasks=600, seed=4)
    policy_file = tmp_path / "active.yaml"
    policy_file.write_text(POLICY_YAML)
    args = ["whatif", "--telemetry", str(spans), "--fleet", str(fleet_path), "--policy",
            str(policy_file), "--lever", "routing", "--candidates", "3", "--trials", "2",
            "--per-trial", "8", "--executor", "inline"]
    state = ["--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, [*state, "--json", *args])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["candidates"], data
    assert _numbers_only(data) == []
    for figure in ("cost_per_green_pr", "green_prs", "fpy"):
        assert set(data["active"][figure]) == {"point", "low", "high"}
        assert isinstance(data["active"][figure]["point"], float)
    for cand in data["candidates"]:
        d = cand["deltas"]["cost_per_green_pr_rel"]
        assert isinstance(d["point"], float) and isinstance(cand["support"], float)
        assert cand["rank_by"] == d["high"]
    highs = [c["rank_by"] for c in data["candidates"] if c["feasible"]]
    assert highs == sorted(highs)  # ranked by the pessimistic end
    assert "high end" in data["ranked_by"]

    from experiments.whatif import candidate_row

    columns = list(candidate_row(data["candidates"][0]))
    assert columns[columns.index("d_cost"):columns.index("d_cost") + 3] == [
        "d_cost", "d_cost_ci", "support"]  # point, interval and support side by side
    table = CliRunner().invoke(cli, [*state, *args])
    assert table.exit_code == 0, table.output
    assert "ranked by the high end of d_cost_ci" in table.output
