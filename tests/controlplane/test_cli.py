"""The `autopilot` command end to end on a temporary state directory (real store, real ingest)."""

import json
import sqlite3

import pytest
from click.testing import CliRunner

from contracts.manifest import load_fleet
from controlplane.cli import cli, main
from policies.policy import load_policy
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    runner = CliRunner()
    result = runner.invoke(cli, ["--state-dir", str(root), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    spans = root / "spans" / "day.jsonl"
    fleet = load_fleet(root / "fleet.yaml")
    policy = load_policy("controlplane/starter/policy.yaml")
    write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=300, day="2026-11-20")), spans)
    with spans.open("a") as fh:
        fh.write("{not json\n")
    result = runner.invoke(cli, ["--state-dir", str(root), "ingest", str(spans)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def run(state, *args):
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "--json", *args],
                                catch_exceptions=False)
    return result


def test_init_is_idempotent(state):
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "--json", "init"])
    assert result.exit_code == 0
    assert "already initialised" in json.loads(result.output)["wrote"]


def test_metrics_whole_window_and_by_family(state):
    [whole] = json.loads(run(state, "metrics").output)
    assert whole["tasks"] == 300
    assert 0 < whole["green_prs"] <= 300
    assert whole["cost_per_green_pr"] > 0
    rows = json.loads(run(state, "metrics", "--by", "family").output)
    assert {r["family"] for r in rows} == {"expr_eval", "list_ops", "bracket_fix", "assert_value"}
    assert sum(r["tasks"] for r in rows) == 300


def test_metrics_rejects_unknown_group(state):
    result = run(state, "metrics", "--by", "colour")
    assert result.exit_code != 0 and "colour" in result.output


def test_finops_register_has_nine_entries(state):
    data = json.loads(run(state, "finops").output)
    ids = [e["id"] for e in data["register"]]
    assert ids == [f"FIN-0{i}" for i in range(1, 10)]
    assert {e["status"] for e in data["register"]} <= {"OK", "BREACH", "NO_DATA"}


def test_policy_show_history_diff_validate(state, tmp_path):
    shown = json.loads(run(state, "policy", "show").output)
    assert len(shown["content_hash"]) == 64
    history = json.loads(run(state, "policy", "history").output)
    assert history[0]["version"] == 1
    changed = tmp_path / "p2.yaml"
    changed.write_text(
        open("controlplane/starter/policy.yaml").read()
        .replace("version: 1", "version: 2\n  parent_version: 1")
        .replace("max_attempts: 3", "max_attempts: 2")
    )
    diff = json.loads(run(state, "policy", "diff", "1", str(changed)).output)
    assert diff == [{"path": "spec.routing.max_attempts", "old": 3, "new": 2}]
    ok = json.loads(run(state, "policy", "validate", str(changed)).output)
    assert ok["valid"] is True


def test_bad_policy_file_is_refused_with_the_field_named(state, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open("controlplane/starter/policy.yaml").read().replace("[S, M, L]", "[S, XL]"))
    with pytest.raises(SystemExit) as exc:
        main(["--state-dir", str(state), "policy", "validate", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "spec.routing.escalation.1" in err and "XL" in err


def test_fleet_show_prices_every_variant(state):
    rows = json.loads(run(state, "fleet", "show").output)
    assert [r["tier"] for r in rows] == ["S", "M", "L"]
    assert all(r["usd_per_1k_input"] > 0 for r in rows)


def test_audit_verify_detects_tampering(state, tmp_path):
    assert json.loads(run(state, "audit", "verify").output)["ok"] is True
    # tamper with a copy so the shared state stays valid for the other tests
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(state, copy)
    db = sqlite3.connect(copy / "autopilot.db")
    table = next(r[0] for r in db.execute("select name from sqlite_master where type='table'")
                 if "audit" in r[0])
    cols = [r[1] for r in db.execute(f"pragma table_info({table})")]
    col = "actor" if "actor" in cols else cols[2]
    db.execute(f"update {table} set {col} = 'mallory' where rowid = 1")
    db.commit()
    db.close()
    result = run(copy, "audit", "verify")
    assert result.exit_code == 1
    assert json.loads(result.output)["ok"] is False


def test_commands_need_init(tmp_path):
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "none"), "metrics"])
    assert result.exit_code != 0 and "autopilot init" in result.output


def test_drive_mix_weights_are_parsed_and_a_bad_item_is_named():
    import click

    from controlplane.cli.common import weights as _weights

    assert _weights("expr_eval=2,list_ops") == {"expr_eval": 2.0, "list_ops": 1.0}
    assert _weights("1=3,3=1", key=int) == {1: 3.0, 3: 1.0}
    assert _weights(None) == {}
    with pytest.raises(click.BadParameter, match="'a=x'"):
        _weights("a=x")


def test_drive_against_no_gateway_fails_with_a_clear_error(state):
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "drive", "--url",
                                      "http://127.0.0.1:9", "--tasks", "1", "--no-ingest"])
    assert result.exit_code != 0
    assert "no gateway answers at http://127.0.0.1:9" in result.output
