"""`autopilot audit verify` replays the log against the state and checks anchors;
`autopilot audit anchor` exports the chain head (issue 14, defect 6)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from controlplane.cli import cli


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def run(state, *args, as_json=True):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *(["--json"] if as_json else []),
                                    *args], catch_exceptions=False)


def _copy(state, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(state, copy)
    return copy


def _sql(root, *statements):
    db = sqlite3.connect(root / "autopilot.db")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_verify_on_a_clean_state_checks_the_state_and_the_anchor_file(state):
    result = run(state, "audit", "verify")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["problems"] == []
    # init activated policy v1: its anchor was appended to the state dir and checked
    assert data["anchors_checked"] == 1
    assert data["anchor_file"] == str(state / "audit" / "anchors.jsonl")
    assert data["head_seq"] == data["entries_checked"] and len(data["head_hash"]) == 64
    table = run(state, "audit", "verify", as_json=False)
    assert table.exit_code == 0 and "problems" in table.output


def test_anchor_prints_and_writes_the_head_as_json(state, tmp_path):
    out = tmp_path / "anchor.json"
    result = run(state, "audit", "anchor", "--out", str(out))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["schema"] == "autopilot.audit-anchor"
    assert printed["anchor"] == f"{printed['entry_hash']}@{printed['seq']}"
    assert printed["ts"] and printed["anchored_at"]
    assert json.loads(run(state, "audit", "anchor", as_json=False).output)["seq"] == \
        printed["seq"]
    verified = run(state, "audit", "verify", "--anchor", str(out),
                   "--anchor", printed["anchor"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["anchors_checked"] == 3


def test_an_edited_active_pointer_fails_verify_by_name(state, tmp_path):
    copy = _copy(state, tmp_path)
    _sql(copy, "INSERT INTO policies (version, content_hash, parent_version, author, created, "
               "stored_at, yaml_text) SELECT 2, content_hash, 1, author, created, stored_at, "
               "replace(yaml_text, 'version: 1', 'version: 2') FROM policies WHERE version = 1",
         "UPDATE active_policy SET version = 2")
    result = run(copy, "audit", "verify")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert any(p.startswith("active policy pointer says v2 but the last promote/rollback "
                            "entry in the audit log") and p.endswith("says v1")
               for p in problems), problems
    assert "policy v2: row exists with no policy.put entry in the audit log" in problems


def test_a_truncated_log_with_its_head_rewritten_fails_against_the_anchor(state, tmp_path):
    anchor = json.loads(run(state, "audit", "anchor").output)
    copy = _copy(state, tmp_path)
    shutil.rmtree(copy / "audit")  # the attacker removes the state dir's anchors too
    _sql(copy, f"DELETE FROM audit_entries WHERE seq = {anchor['seq']}",
         f"UPDATE audit_head SET last_seq = {anchor['seq'] - 1}, last_hash = (SELECT "
         f"entry_hash FROM audit_entries WHERE seq = {anchor['seq'] - 1})")
    result = run(copy, "audit", "verify", "--anchor", anchor["anchor"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert any("the log was truncated" in p for p in data["problems"]), data
    assert data["anchors_checked"] == 1


def test_a_bad_anchor_is_refused_with_its_name(state, tmp_path):
    result = run(state, "audit", "verify", "--anchor", "nothing-here")
    assert result.exit_code != 0 and "HASH@SEQ" in result.output
