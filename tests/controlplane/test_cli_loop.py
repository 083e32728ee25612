"""`autopilot proposals`, `policy rollback` and `report` on a real store."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from controlplane.cli import cli
from controlplane.settings import StateDir
from store import GateVerdict, ProposalState, Store


@pytest.fixture()
def state(tmp_path):
    root = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    settings = yaml.safe_load((root / "autopilot.yaml").read_text())
    settings["platform_owners"] = ["alice", "bob"]
    (root / "autopilot.yaml").write_text(yaml.safe_dump(settings))
    store = Store.open(StateDir(root).store_url())
    v1 = store.active_policy().policy
    v2 = v1.evolve(author="alice", routing=v1.spec.routing.model_copy(update={"max_attempts": 2}))
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window="2026-11-20", actor="alice",
                              predicted={"cost_per_green_pr_rel_delta": -0.1, "risk": "low"})
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates",
                      evidence={"gates": [{"name": "pinned_weights", "phase": "PASSED",
                                           "message": "ok"}]})
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="nightly")
    return root, store, p.proposal_id


def run(root, *args):
    return CliRunner().invoke(cli, ["--state-dir", str(root), "--json", *args])


def test_list_and_show(state):
    root, _, pid = state
    rows = json.loads(run(root, "proposals", "list").output)
    assert [r["proposal_id"] for r in rows] == [pid] and rows[0]["state"] == "awaiting_approval"
    shown = json.loads(run(root, "proposals", "show", pid).output)
    assert shown["diff"] == ["spec.routing.max_attempts: 3 -> 2"]


def test_author_cannot_approve_and_strangers_are_refused(state):
    root, store, pid = state
    author = run(root, "proposals", "approve", pid, "--as", "alice")
    assert author.exit_code != 0 and "four eyes" in str(author.exception or author.output)
    stranger = run(root, "proposals", "approve", pid, "--as", "mallory")
    assert stranger.exit_code != 0
    assert store.get_proposal(pid).state == ProposalState.AWAITING_APPROVAL


def test_approve_promote_then_rollback(state):
    root, store, pid = state
    ok = run(root, "proposals", "approve", pid, "--as", "bob", "--reason", "good")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["nightly_flow"].startswith("no nightly run")
    store.promote(pid, actor="nightly", reason="approved")
    assert store.active_policy().version == 2
    back = run(root, "policy", "rollback", "--as", "bob", "--reason", "regression")
    assert back.exit_code == 0, back.output
    assert store.active_policy().version == 1
    assert store.get_proposal(pid).state == ProposalState.ROLLED_BACK
    assert store.verify_audit().ok


def test_a_second_rollback_never_brings_back_the_rolled_back_policy(state):
    root, store, pid = state
    assert run(root, "proposals", "approve", pid, "--as", "bob").exit_code == 0
    store.promote(pid, actor="nightly", reason="approved")
    assert run(root, "policy", "rollback", "--as", "bob", "--reason", "regression").exit_code == 0
    assert store.active_policy().version == 1
    again = run(root, "policy", "rollback", "--as", "bob", "--reason", "again")
    # v1 is the only good version: nothing earlier to restore, and v2 stays rolled back.
    assert again.exit_code != 0 and "no earlier good policy" in str(again.exception or again.output)
    assert store.active_policy().version == 1


def test_last_good_version_skips_rolled_back_candidates():
    from types import SimpleNamespace as A

    from controlplane.loop.promotion import last_good_version

    # newest first: v1 restored (rollback of v3), v3 promoted over v1... v2 rolled back before
    history = [A(version=1, previous_version=3), A(version=3, previous_version=1),
               A(version=1, previous_version=2), A(version=2, previous_version=1)]
    assert last_good_version(history, current=1, rolled_back={2, 3}) is None
    assert last_good_version(history, current=3, rolled_back={2}) == 1
    history = [A(version=4, previous_version=1), *history]
    assert last_good_version(history, current=4, rolled_back={2, 3}) == 1


def test_reject_needs_a_reason_and_is_final(state):
    root, store, pid = state
    assert run(root, "proposals", "reject", pid, "--as", "bob").exit_code != 0
    assert run(root, "proposals", "reject", pid, "--as", "bob", "--reason", "no").exit_code == 0
    again = run(root, "proposals", "approve", pid, "--as", "bob")
    assert again.exit_code != 0
    assert store.get_proposal(pid).state == ProposalState.REJECTED


def test_report_change_writes_files(state):
    root, _, pid = state
    out = json.loads(run(root, "report", "change", pid).output)
    assert out["markdown"].endswith(f"{pid}.md")
    bad = run(root, "report", "quarterly", "Q4-2026")
    assert bad.exit_code != 0


def test_report_calibration_table_and_json(state):
    root, store, pid = state
    empty = run(root, "report", "calibration")
    assert empty.exit_code == 0 and json.loads(empty.output)["records"] == []
    plain = CliRunner().invoke(cli, ["--state-dir", str(root), "report", "calibration"])
    assert plain.exit_code == 0 and "no calibration record yet" in plain.output
    # the proposal predicted -10% with no interval; give it one look without and one with
    store.record_calibration(pid, look=1, realised=-0.04, realised_ci=(-0.09, 0.01),
                             realised_window="2026-11-21..2026-11-21", outcome="keep_watching",
                             baseline_tasks=300, candidate_tasks=280, actor="autopilot-verify")
    v2 = store.get_policy(2).policy
    v3 = v2.evolve(author="alice", routing=v2.spec.routing.model_copy(update={"max_attempts": 1}))
    store.put_policy(v3)
    q = store.create_proposal(candidate_version=3, baseline_version=1, lever="routing",
                              window="2026-11-22", actor="alice",
                              predicted={"cost_per_green_pr_rel_delta": -0.2,
                                         "cost_per_green_pr_rel_delta_ci": [-0.25, -0.15],
                                         "level": 0.9})
    store.record_calibration(q.proposal_id, look=1, realised=-0.02, realised_ci=(-0.06, 0.02),
                             realised_window="2026-11-23..", outcome="verified",
                             baseline_tasks=300, candidate_tasks=300, actor="autopilot-verify")
    out = json.loads(run(root, "report", "calibration").output)
    assert [r["proposal_id"] for r in out["records"]] == [pid, q.proposal_id]
    miss = out["records"][1]
    assert miss["inside"] is False and miss["predicted_low"] == -0.25
    # outside allowing the realised day's own noise (0.04 on the side facing the
    # prediction): the errors add in quadrature (store.records.realised_gap)
    distance, noise, half = -0.02 - -0.2, -0.02 - -0.06, 0.05
    assert miss["miss"] == pytest.approx((distance ** 2 - noise ** 2) ** 0.5 / half - 1.0)
    [lever] = out["levers"]
    assert lever["lever"] == "routing" and lever["changes"] == 1 and lever["misses"] == 1
    needed = (distance ** 2 - noise ** 2) ** 0.5 / half
    assert lever["coverage"] == 0.0 and lever["factor"] == pytest.approx(needed)
    table = CliRunner().invoke(cli, ["--state-dir", str(root), "report", "calibration"])
    assert table.exit_code == 0, table.output
    assert "-20.0 [-25.0,-15.0]" in table.output and "NO" in table.output
    assert f"{needed:.2f}x" in table.output
    only = json.loads(run(root, "report", "calibration", "--lever", "cache").output)
    assert only["records"] == [] and only["levers"] == []
