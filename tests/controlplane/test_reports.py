"""Change and quarterly reports over a real store and simulated telemetry."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.manifest import load_fleet
from controlplane.bootstrap import initialise_state
from controlplane.reports import (
    first_day_served,
    quarter_bounds,
    write_change_report,
    write_quarterly_report,
)
from controlplane.settings import StateDir
from store import Decision, GateVerdict, ProposalState, Store
from telemetry.ingest import ingest_paths
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans


@pytest.fixture()
def promoted(tmp_path):
    state = StateDir(tmp_path / "state")
    initialise_state(state)
    fleet = load_fleet(state.fleet_path)
    store = Store.open(state.store_url())
    v1 = store.active_policy().policy
    routing = v1.spec.routing.model_copy(update={"max_attempts": 2})
    v2 = v1.evolve(author="autopilot-nightly", description="fewer repair loops", routing=routing)
    store.put_policy(v2)
    for day, policy in (("2026-11-20", v1), ("2026-11-21", v2)):
        f = state.spans_dir / f"{day}.jsonl"
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=300, day=day)), f)
        ingest_paths([f], state.telemetry_dir)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window="2026-11-20", actor="autopilot-nightly",
                              predicted={"cost_per_green_pr_rel_delta": -0.12, "risk": "low"})
    evidence = {"suite_hash": "ab" * 32, "gates": [
        {"name": "pinned_weights", "phase": "PASSED", "message": "3/3 files match"},
        {"name": "quality_non_inferiority", "phase": "PASSED",
         "message": "pass rate 0.91 vs 0.90, lower bound -0.01 > margin -0.02"}]}
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates", evidence=evidence)
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="nightly")
    store.record_decision(p.proposal_id, approver="alice", decision=Decision.APPROVE,
                          reason="looks right")
    store.promote(p.proposal_id, actor="nightly", reason="approved")
    store.audit_append(actor="verify", action="verify.look", subject=p.proposal_id,
                       payload={"outcome": "verified", "message": "realised -10.0%",
                                "stats": {"rel_delta": -0.10}})
    return state, store, fleet, p.proposal_id


def test_change_report_names_the_change(promoted):
    state, store, fleet, pid = promoted
    out = write_change_report(state, store, fleet, pid)
    md = Path(out["markdown"]).read_text(encoding="utf-8")
    page = Path(out["html"]).read_text(encoding="utf-8")
    assert f"Change report {pid}: routing" in md
    assert "spec.routing.max_attempts: 3 -> 2" in md
    assert "quality_non_inferiority | PASSED" in md
    assert "approve by **alice**" in md and "realised -10.0%" in md
    # predicted against realised, cost per Green PR, FPY, tier mix (a flat-zero cache
    # hit rate is a sentence, not a chart)
    assert int(out["charts"]) == 4
    assert "Cache hit rate was 0% on every serve day" in page
    assert page.count("data:image/png;base64,") == 4 and "max_attempts: 3 -&gt; 2" in page


def test_quarterly_report_aggregates(promoted):
    state, store, fleet, pid = promoted
    quarter = f"{store.get_proposal(pid).created_at.year}Q" \
              f"{(store.get_proposal(pid).created_at.month - 1) // 3 + 1}"
    out = write_quarterly_report(state, store, fleet, quarter)
    md = Path(out["markdown"]).read_text(encoding="utf-8")
    assert pid in md and "1 promoted" in md


def test_quarter_bounds():
    assert [d.isoformat() for d in quarter_bounds("2026q4")] == ["2026-10-01", "2026-12-31"]
    assert [d.isoformat() for d in quarter_bounds("2027Q1")] == ["2027-01-01", "2027-03-31"]
    with pytest.raises(ValueError, match="2026Q4"):
        quarter_bounds("2026-4")


def test_the_change_is_marked_on_the_first_day_served_under_it():
    versions = [("2026-12-02", "2"), ("2026-12-01", "1"), ("2026-12-03", "2")]
    assert first_day_served(versions, 2) == "2026-12-02"
    assert first_day_served(versions, 3) is None


def test_every_report_prints_the_audit_chain_head_as_an_anchor(promoted):
    # The head (seq and hash) is printed in the change and the quarterly report, in a form
    # `autopilot audit verify --anchor` takes (issue 14, defect 6).
    state, store, fleet, pid = promoted
    head = store.audit_anchor()
    quarter = f"{store.get_proposal(pid).created_at.year}Q" \
              f"{(store.get_proposal(pid).created_at.month - 1) // 3 + 1}"
    change = write_change_report(state, store, fleet, pid)
    quarterly = write_quarterly_report(state, store, fleet, quarter)
    for out in (change, quarterly):
        for kind in ("markdown", "html"):
            text = Path(out[kind]).read_text(encoding="utf-8")
            assert f"#{head.seq}" in text and head.entry_hash in text, (out[kind])
            assert f"--anchor {head.entry_hash}@{head.seq}" in text
            assert "the state tables" in text and "NOT verified" not in text


def test_a_report_says_when_the_state_disagrees_with_the_audit_log(promoted):
    import sqlalchemy as sa

    state, store, fleet, pid = promoted
    engine = sa.create_engine(state.store_url())
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE active_policy SET version = 1")
    engine.dispose()
    md = Path(write_change_report(state, store, fleet, pid)["markdown"]).read_text("utf-8")
    assert "NOT verified" in md and "active policy pointer says v1" in md
