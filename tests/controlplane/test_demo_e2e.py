"""The reduced demo end to end: the reference fleet on Ray Serve + vLLM, a day of tasks
under the naive policy, the nightly flow for real (Prefect, Ray Tune, gates through the
running fleet), promotion, a second day, verify, reports.

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


def test_a_gated_proposal_was_promoted_and_the_gateway_serves_it(demo):
    from store import Store

    state, summary, lines = demo
    assert summary["promoted"], "\n".join(lines)
    with Store.open(state.store_url()) as store:
        proposals = store.list_proposals()
        promoted = [p for p in proposals
                    if p.state.value in ("active", "verified", "rolled_back")]
        assert promoted, [(p.proposal_id, p.state.value) for p in proposals]
        proposal = promoted[0]
        assert proposal.evidence_hash and proposal.gate_verdict.value == "PASSED"
        assert store.get_evidence(proposal.evidence_hash) is not None
        activated = [a.version for a in store.activation_history()]
        assert proposal.candidate_version in activated and proposal.candidate_version != 1
        assert store.verify_audit().ok
    assert summary["active_version"] == proposal.candidate_version
    assert summary["gateway_serves_active"] is True


def test_day_two_figures_are_measured_from_the_telemetry(demo):
    from contracts.manifest import load_fleet
    from controlplane.views import metrics_rows

    state, summary, _ = demo
    day2 = summary["days"][1]
    rows = metrics_rows(state, load_fleet(state.fleet_path), [], day2, day2)
    assert rows and rows[0]["tasks"] == summary["day2"]["tasks"] > 0
    assert rows[0]["cost_per_green_pr"] == pytest.approx(summary["day2"]["cost_per_green_pr"])
    # Day 2 was served under the promoted policy: the gateway stamped its version on the calls.
    from telemetry.warehouse import read_table

    calls = read_table(state.telemetry_dir, "calls", days=[day2])
    assert set(calls["policy_version"].dropna()) == {str(summary["active_version"])}

def test_verify_compares_the_measured_days_with_the_recorded_prediction(demo):
    # The verify flow's realised change is the one the two measured days give (each day
    # served under one version), and its prediction is the one the proposal recorded.
    _, summary, _ = demo
    predicted = summary["predicted"]["cost_per_green_pr_rel_delta"]
    assert -1.0 < predicted < 0.0
    stats = summary["verify"]["stats"]
    assert stats["predicted_rel_delta"] == pytest.approx(predicted)
    realised = summary["day2"]["cost_per_green_pr"] / summary["day1"]["cost_per_green_pr"] - 1
    assert stats["rel_delta"] == pytest.approx(realised, abs=0.002)
    low, high = stats["rel_delta_ci"]
    assert low <= stats["rel_delta"] <= high


def test_reports_exist_and_name_the_change(demo):
    _, summary, _ = demo
    change = summary["change_report"]
    assert change is not None
    markdown = Path(change["markdown"]).read_text()
    html = Path(change["html"]).read_text()
    pid = next(p["proposal_id"] for p in summary["nightly"]["proposals"]
               if "active_version" in p)
    assert pid in markdown and pid in html
    assert Path(summary["quarterly_report"]["html"]).is_file()
