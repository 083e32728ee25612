"""The reduced demo end to end: the reference fleet on Ray Serve + vLLM, a day of tasks
under the naive policy, the nightly flow for real (Prefect, Ray Tune, gates through the
running fleet), the approved change as a canary on 25% of new tasks beside the active
policy, a second day served by both, the canary's look (canary against control on the same
day), reports. A canary stopped for a regression is tested on recorded telemetry in
tests/controlplane/loop/test_canary_verify.py.

Asserts the loop's real effects, not the demo's printout: a proposal with evidence exists,
promotion changed the policy the gateway serves, the day-2 cost per Green PR is what the
ingested telemetry says (recomputed here, not copied from the prediction), and the reports
exist and name the change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REFERENCE_FLEET = Path(__file__).resolve().parents[2] / "training" / "fleet"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (REFERENCE_FLEET / "fleet.yaml").is_file():
        pytest.skip("the reference fleet is not trained (autopilot fleet train)")
    from controlplane.demo import run_demo
    from controlplane.settings import StateDir

    state = StateDir(tmp_path_factory.mktemp("demo") / "state")
    lines: list[str] = []
    summary = run_demo(state, quick=True, echo=lines.append)
    return state, summary, lines


def _first_change(summary):
    night = summary["nights"][0]
    assert night["promoted"] or night.get("canary"), night["headline"]
    return night


def test_a_gated_proposal_went_to_a_canary_and_the_gateway_served_both(demo):
    """Night 1's change is gated, approved and starts as a canary on 25% of new tasks: the
    gateway serves both versions on day 2 without a restart, split by the task-id hash."""
    from policies.routing import in_canary
    from store import Store
    from telemetry.warehouse import read_table

    state, summary, lines = demo
    night = _first_change(summary)
    with Store.open(state.store_url()) as store:
        proposal = store.get_proposal(night["proposal_id"])
        assert proposal.evidence_hash and proposal.gate_verdict.value == "PASSED"
        assert store.get_evidence(proposal.evidence_hash) is not None
        assert store.verify_audit().ok
        rollout = store.get_rollout(proposal.proposal_id)
    if night.get("canary") is None:  # an exempt lever is promoted at once
        assert proposal.lever == "exploration", night
        return
    assert night["canary"]["share"] == 0.25 and rollout is not None
    day2 = summary["days"][1]
    tasks = read_table(state.telemetry_dir, "tasks", days=[day2])
    versions = tasks["policy_version"].astype(str)
    on_canary = tasks[versions == str(proposal.candidate_version)]
    assert set(versions) == {str(proposal.baseline_version), str(proposal.candidate_version)}
    assert 0.15 < len(on_canary) / len(tasks) < 0.35
    # Which tasks the canary served is the stable hash of their ids (policies.routing).
    assert all(in_canary(t, 0.25) for t in on_canary["task_id"])
    assert summary["gateway_serves_active"] is True, "\n".join(lines)


def test_the_canary_look_compares_canary_and_control_on_the_same_day(demo):
    """The verify flow's look at the canary: its figures are those of the day-2 tasks of
    each version (recomputed here from the telemetry), its action follows them, and a
    completed canary is the active policy."""
    from contracts.manifest import load_fleet
    from controlplane.loop.verify_adapter import served_by, task_outcomes
    from controlplane.views import read_metric_frames
    from store import Store

    state, summary, _ = demo
    night = _first_change(summary)
    look = night.get("verify")
    assert look, night
    if not look.get("canary"):
        return
    stats = look["stats"]
    with Store.open(state.store_url()) as store:
        proposal = store.get_proposal(night["proposal_id"])
        active = store.active_policy().version
        state_now = store.get_proposal(proposal.proposal_id).state.value
    assert stats["predicted_rel_delta"] == pytest.approx(
        proposal.predicted.cost_per_green_pr_rel_delta)
    day2 = summary["days"][1]
    frames = read_metric_frames(state, day2, day2)
    fleet = load_fleet(state.fleet_path)
    per_version = {}
    for version in (proposal.baseline_version, proposal.candidate_version):
        spend, green, _ = task_outcomes(*served_by(frames, version), fleet)
        per_version[version] = spend.sum() / green.sum()
    realised = per_version[proposal.candidate_version] / per_version[proposal.baseline_version]
    assert stats["rel_delta"] == pytest.approx(realised - 1, abs=1e-6)
    low, high = stats["rel_delta_ci"]
    assert low <= stats["rel_delta"] <= high
    if look["outcome"] == "complete":
        assert active == proposal.candidate_version and state_now == "active"
    elif look["outcome"] == "abort":
        assert active == proposal.baseline_version and state_now == "rolled_back"
    else:
        assert look["outcome"] in ("hold", "advance") and state_now == "canary"


def test_day_figures_are_measured_from_the_telemetry(demo):
    from contracts.manifest import load_fleet
    from controlplane.views import metrics_rows

    state, summary, _ = demo
    for figures in summary["figures"]:
        day = figures["day"]
        rows = metrics_rows(state, load_fleet(state.fleet_path), [], day, day)
        assert rows and rows[0]["tasks"] == figures["tasks"] > 0
        assert rows[0]["cost_per_green_pr"] == pytest.approx(figures["cost_per_green_pr"])


def test_reports_exist_and_name_the_change(demo):
    _, summary, _ = demo
    night = _first_change(summary)
    change = night["change_report"]
    markdown = Path(change["markdown"]).read_text()
    html = Path(change["html"]).read_text()
    assert night["proposal_id"] in markdown and night["proposal_id"] in html
    assert Path(summary["quarterly_report"]["html"]).is_file()
