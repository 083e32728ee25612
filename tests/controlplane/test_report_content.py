"""The change and quarterly reports read as evidence: headline numbers, one evidence hash
everywhere, links that resolve, charts inlined with alt text (issue 16)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contracts.manifest import load_fleet
from contracts.prediction import Prediction
from controlplane.bootstrap import initialise_state
from controlplane.reports import headline, write_change_report, write_quarterly_report
from controlplane.settings import StateDir
from store import Decision, GateVerdict, ProposalState, Store
from telemetry.ingest import ingest_paths
from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    state = StateDir(tmp_path_factory.mktemp("reports") / "state")
    initialise_state(state)
    fleet = load_fleet(state.fleet_path)
    store = Store.open(state.store_url())
    v1 = store.active_policy().policy
    routing = v1.spec.routing.model_copy(update={"max_attempts": 2})
    v2 = v1.evolve(author="autopilot-nightly", description="fewer repair loops", routing=routing)
    store.put_policy(v2)
    for seed, (day, policy) in enumerate((("2026-11-20", v1), ("2026-11-21", v2),
                                          ("2026-11-22", v2))):
        f = state.spans_dir / f"{day}.jsonl"
        shape = WorkloadShape(tasks=200, day=day, seed=seed + 1)
        write_spans(simulate_spans(policy, fleet, shape), f)
        ingest_paths([f], state.telemetry_dir)
    predicted = {"cost_per_green_pr_rel_delta": -0.193,
                 "cost_per_green_pr_rel_delta_ci": [-0.204, -0.180], "level": 0.9,
                 "support": 0.82, "fpy_delta": 0.004, "fpy_delta_ci": [-0.01, 0.02],
                 "cost_per_green_pr": 0.21, "risk": "low"}
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window="2026-11-20", actor="autopilot-nightly", predicted=predicted)
    evidence = {"suite_hash": "ab" * 32, "bundle_hash": "cd" * 32, "gates": [
        {"name": "quality_non_inferiority", "phase": "PASSED", "message": "lower bound ok"}]}
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates", evidence=evidence)
    sha = store.get_proposal(p.proposal_id).evidence_hash
    # what gates.evidence.record_evidence appends beside the stored bundle
    store.audit_append(actor="gates", action="gate.run", subject="policy/v2",
                       payload={"evidence_sha256": sha, "bundle_hash": "cd" * 32,
                                "overall": "PASSED", "dry_run": False,
                                "proposal_id": p.proposal_id})
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="nightly")
    store.record_decision(p.proposal_id, approver="alice", decision=Decision.APPROVE,
                          reason="looks right")
    store.promote(p.proposal_id, actor="nightly", reason="approved")
    store.audit_append(actor="verify", action="verify.look", subject=p.proposal_id,
                       payload={"outcome": "keep_watching", "message": "realised -2.8%",
                                "stats": {"rel_delta": -0.028, "rel_delta_ci": [-0.132, 0.087]}})
    store.record_calibration(p.proposal_id, look=1, realised=-0.028,
                             realised_ci=(-0.132, 0.087), realised_window="2026-11-21..",
                             outcome="keep_watching", baseline_tasks=200, candidate_tasks=400,
                             actor="verify")
    return state, store, fleet, p.proposal_id, sha


def test_headline_names_the_miss():
    pred = Prediction(cost_per_green_pr_rel_delta=-0.193,
                      cost_per_green_pr_rel_delta_ci=(-0.204, -0.180))
    h = headline(2, pred, {"realised": -0.028, "realised_ci": [-0.132, 0.087]})
    assert h["text"] == ("v2 lowered cost per Green PR by 2.8% (-13.2% to +8.7%), predicted "
                         "19.3% (18.0% to 20.4%): outside the predicted interval")
    assert h["verdict"] == "outside"
    assert headline(2, pred, None)["verdict"] is None


def test_exploration_headline_shows_dollars_against_budget():
    pred = Prediction(lever="exploration", exploration={
        "tiers": ["large"], "families": ["refactor"], "rate": 0.1, "usd_per_day": 1.5,
        "budget_usd_per_day": 2.0})
    text = headline(3, pred, None)["text"]
    assert "$1.500/day" in text and "$2.000/day" in text and "within budget" in text


def _links(page: str) -> list[str]:
    return [h for h in re.findall(r'href="([^"#]+)"', page) if not h.startswith("http")]


def test_change_report_is_evidence(recorded):
    state, store, fleet, pid, sha = recorded
    out = write_change_report(state, store, fleet, pid)
    md = Path(out["markdown"]).read_text()
    page = Path(out["html"]).read_text()
    sentence = ("v2 lowered cost per Green PR by 2.8% (-13.2% to +8.7%), predicted 19.3% "
                "(18.0% to 20.4%): outside the predicted interval")
    assert sentence in md and sentence in page
    # names and units a person reads, point and interval side by side; no raw keys
    assert "| Cost per Green PR, change | -19.3% | -20.4% to -18.0% |" in md
    assert "First-pass yield, change" in page and "+0.4 pp" in page
    assert "cost_per_green_pr_rel_delta" not in page
    assert "90.0% intervals" in page and "Support 82.0%" in page
    # one evidence hash everywhere, and the link resolves to the bundle with that hash
    assert sha in md and sha in page
    assert "names this hash" in page
    hashes = set(re.findall(r"\b[0-9a-f]{64}\b", page)) - {"cd" * 32, "ab" * 32}
    head = store.audit_entries(newest_first=True, limit=1)[0]
    assert hashes <= {sha, head.entry_hash}
    links = _links(page)
    assert links, "the evidence bundle is linked"
    folder = Path(out["html"]).parent
    for link in links:
        target = (folder / link).resolve()
        assert target.exists(), link
    import hashlib

    assert hashlib.sha256((folder / f"../evidence/{sha}.json").read_bytes()).hexdigest() == sha
    # the audit chain head, and the gate.run entry in the trail
    assert head.entry_hash in page and "gate.run" in page
    # self-contained: charts inline with alt text, nothing fetched
    imgs = re.findall(r'<img alt="([^"]+)" src="(data:image/png;base64,[^"]+)"', page)
    assert len(imgs) == int(out["charts"]) >= 3
    assert all(alt.strip() for alt, _ in imgs)
    assert "Predicted change of cost per Green PR -19.3%" in page
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page


def test_quarterly_report_is_evidence(recorded):
    state, store, fleet, pid, _sha = recorded
    created = store.get_proposal(pid).created_at
    quarter = f"{created.year}Q{(created.month - 1) // 3 + 1}"
    out = write_quarterly_report(state, store, fleet, quarter)
    md = Path(out["markdown"]).read_text()
    page = Path(out["html"]).read_text()
    for text in (md, page):
        assert pid in text and "Cost per Green PR" in text and "Green PRs" in text
        assert "-19.3%" in text and "-2.8%" in text and "outside" in text
        assert "FIN-01" in text and "FIN-09" in text
    assert "1 promoted" in md
    assert "Calibration record" in page and "Spend per team against budget" in page
    folder = Path(out["html"]).parent
    links = _links(page)
    assert f"../changes/{pid}.html" in links
    for link in links:
        assert (folder / link).resolve().exists(), link
    for link in re.findall(r"\]\(([^)]+\.md)\)", md):
        assert (folder / link).resolve().exists(), link
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert len(imgs) == int(out["charts"]) and any(a.startswith("Calibration") for a in imgs)


def test_canary_steps_and_gate_days_are_shown(recorded):
    from dataclasses import replace

    from controlplane.reports import (
        _day_kind,
        fmt,
        gather_change_report,
        render_change_html,
        render_change_markdown,
    )

    state, store, fleet, pid, _sha = recorded
    report = gather_change_report(state, store, fleet, pid)
    canary = {"rollout": None, "steps": [
        {"ts": "2026-11-21T02:00:00", "action": "proposal.canary", "share": 0.1, "step": 0,
         "decision": "start", "message": ""},
        {"ts": "2026-11-22T03:00:00", "action": "rollout.advance", "share": 0.5, "step": 1,
         "decision": "advance", "message": "no regression at 10%"}]}
    gate_day = {"day": "2026-11-23", "tasks": 0, "green_prs": 0, "spend_total": 0.3,
                "spend_gate": 0.3, "spend_eval": 0.0, "kind": "gate/eval", "fpy": None,
                "cost_per_green_pr": None, "cache_hit_rate": None}
    report = replace(report, canary=canary, daily=[*report.daily, gate_day])
    md = render_change_markdown(report, {}, [])
    page = render_change_html(report, [])
    assert "| 2026-11-22T03:00:00 | rollout.advance | 50.0% | 1 | advance |" in md
    assert "## Canary" in md and "<h2>Canary</h2>" in page
    assert '<tr class="gate"><td>2026-11-23</td><td>gate/eval</td>' in page
    assert _day_kind({"tasks": 0, "spend_total": 0.3}) == "gate/eval"
    assert _day_kind({"tasks": 50, "spend_total": 4.0, "spend_gate": 0.1}) == "serve"
    assert fmt(-0.15, "usd") == "-$0.1500" and fmt(-0.028, "rel") == "-2.8%"
