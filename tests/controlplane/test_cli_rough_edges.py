"""Issue 15, defect 9: `--json` on either side of the subcommand, a readable `metrics`
table, refused non-days, and `init --sample` (shipped sample telemetry)."""

import json

import click
import pytest
from click.testing import CliRunner

from controlplane.bootstrap import SAMPLE_SPANS
from controlplane.cli import cli
from controlplane.starter.make_sample import write_sample
from controlplane.views import METRICS_KEY_COLUMNS


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-state")
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init", "--sample"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "sample_telemetry" in result.output
    return root


def invoke(state, *args, env=None):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args], env=env)


# ------------------------------------------------------------------------------ --json
def test_json_before_and_after_the_subcommand_are_the_same(state):
    before = invoke(state, "--json", "metrics", "--by", "family")
    after = invoke(state, "metrics", "--by", "family", "--json")
    assert before.exit_code == after.exit_code == 0, after.output
    assert json.loads(before.output) == json.loads(after.output)
    nested = invoke(state, "policy", "show", "--json")
    assert nested.exit_code == 0, nested.output
    assert len(json.loads(nested.output)["content_hash"]) == 64


def _leaves(group: click.Group, path=()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))


def test_every_command_takes_json():
    missing = [" ".join(path) for path, command in _leaves(cli)
               if not any("--json" in getattr(p, "opts", ()) for p in command.params)]
    assert missing == []


# ----------------------------------------------------------------------------- metrics
def test_init_sample_then_metrics_works(state):
    [whole] = json.loads(invoke(state, "--json", "metrics").output)
    assert whole["tasks"] == 220 and whole["green_prs"] > 0 and whole["cost_per_green_pr"] > 0
    days = json.loads(invoke(state, "--json", "metrics", "--by", "day").output)
    assert [d["day"] for d in days] == ["2026-11-19", "2026-11-20"]


def _header(output: str) -> str:
    return next(line for line in output.splitlines() if "tasks" in line)


def test_the_default_table_shows_the_key_columns_in_the_terminal_width(state):
    result = invoke(state, "metrics", "--by", "family", env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    header = _header(result.output)
    for column in ("family", *METRICS_KEY_COLUMNS):
        assert column in header, column
    assert "spot_share" not in result.output and "tier_share_S" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 160
    narrow = invoke(state, "metrics", env={"COLUMNS": "90"})
    assert max(len(line) for line in narrow.output.splitlines()) <= 90


def test_columns_chooses_what_the_table_shows(state):
    result = invoke(state, "metrics", "--by", "team", "--columns", "tasks,spot_share",
                    env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    header = _header(result.output)
    assert "team" in header and "spot_share" in header and "fpy" not in header
    every = invoke(state, "metrics", "--columns", "all", env={"COLUMNS": "1000"})
    assert "tier_share_S" in every.output and "idle_share" in every.output
    bad = invoke(state, "metrics", "--columns", "tasks,colour")
    assert bad.exit_code == 2 and "colour" in bad.output


# ------------------------------------------------------------------------------- days
@pytest.mark.parametrize("args", [
    ("metrics", "--since", "2026-13-01"),
    ("metrics", "--until", "2026-02-30"),
    ("metrics", "--since", "yesterday"),
    ("finops", "--since", "20261101"),
    ("nightly", "--since", "2026-13-01"),
    ("anomalies", "--until", "2026-00-10"),
    ("distill", "--candidates", "--since", "2026-1-1"),
])
def test_a_day_that_is_not_a_day_is_refused(state, args):
    result = invoke(state, *args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and args[-1] in result.output


def test_a_real_day_still_filters(state):
    [day] = json.loads(invoke(state, "--json", "metrics", "--since", "2026-11-20").output)
    assert day["tasks"] == 110


# ----------------------------------------------------------------------------- sample
def test_the_committed_sample_is_what_make_sample_writes(tmp_path):
    assert SAMPLE_SPANS.stat().st_size < 1_000_000
    out = tmp_path / "sample.jsonl"
    write_sample(out)
    assert out.read_bytes() == SAMPLE_SPANS.read_bytes(), \
        "regenerate: python -m controlplane.starter.make_sample"


def test_init_sample_is_idempotent(state):
    result = invoke(state, "--json", "init", "--sample")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sample_telemetry"].startswith("0 rows")
    [whole] = json.loads(invoke(state, "--json", "metrics").output)
    assert whole["tasks"] == 220
