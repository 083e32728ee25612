"""`autopilot gate --proposal P` records a verdict on P only when it judged P's own
candidate against P's baseline on the pinned suite (issue 14, defect 2): before the fix,
`gate --candidate A --proposal P` recorded A's evidence on P whose candidate is B, and B was
then promoted without ever being gated."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from gates_testkit import competent, make_policy, tiny_suite, write_fleet

import gates.port
from controlplane.cli import cli, main
from controlplane.loop.gating import store_candidate
from controlplane.loop.promotion import promote_approved
from gates.fakes import FakeServingPath
from gates.suite import REFERENCE_SUITE_SHA256, save_suite
from store import Decision, ProposalState, Store

B = make_policy(2, routing={"router": "fixed", "escalation": ["M", "L"], "max_attempts": 3})
A = make_policy(3, routing={"router": "fixed", "escalation": ["L"], "max_attempts": 2})


class StoredPolicies:
    def __init__(self, url):
        self.url, self.seen = url, {}

    def __getitem__(self, version):
        if version not in self.seen:
            with Store.open(self.url) as store:
                self.seen[version] = store.get_policy(version).policy
        return self.seen[version]


@pytest.fixture
def state(tmp_path, monkeypatch):
    fleet = write_fleet(tmp_path / "fleet")
    active = tmp_path / "active.yaml"
    active.write_text(make_policy(1).to_yaml())
    root = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init", "--fleet", str(fleet),
                                      "--policy", str(active)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{root / 'autopilot.db'}"
    monkeypatch.setattr(gates.port, "GatewayServingPath",
                        lambda base_url: FakeServingPath(policies=StoredPolicies(url),
                                                         answer=competent))
    with Store.open(url) as store:
        stored, _ = store_candidate(store, B, baseline_version=1)
        pid = store.create_proposal(candidate_version=stored.metadata.version,
                                    baseline_version=1, lever="routing", window="2026-11-20",
                                    actor="test").proposal_id
    for name, policy in (("a.yaml", A), ("b.yaml", B)):
        (tmp_path / name).write_text(policy.to_yaml())
    return {"root": root, "fleet": fleet, "tmp": tmp_path, "url": url, "pid": pid}


def run_gate(state, candidate_file, *extra):
    args = ["--state-dir", str(state["root"]), "gate", "--candidate",
            str(state["tmp"] / candidate_file), "--fleet", str(state["fleet"]),
            "--url", "http://gateway.invalid", "--proposal", state["pid"], *extra]
    try:
        main(args)
    except SystemExit as exited:
        return exited.code
    return 0


def test_another_candidates_verdict_is_refused_before_anything_runs(state, capsys):
    assert run_gate(state, "a.yaml") == 2
    err = capsys.readouterr().err
    assert f"proposal {state['pid']}" in err
    assert A.content_hash[:12] in err and B.content_hash[:12] in err
    with Store.open(state["url"]) as store:
        p = store.get_proposal(state["pid"])
        assert p.state is ProposalState.PROPOSED and p.gate_verdict is None
        assert p.evidence_hash is None and store.evidence_for(state["pid"]) == []
        assert [r.version for r in store.list_policies()] == [1, 2]  # A was not stored
        assert store.audit_entries(action="gate.run") == []
    assert not list((state["root"] / "reports" / "evidence").glob("*.json"))


def test_a_custom_suite_never_records_a_proposals_verdict(state, capsys):
    suite_file = save_suite(tiny_suite(), state["tmp"] / "tiny.json")
    assert run_gate(state, "b.yaml", "--suite", str(suite_file)) == 2
    err = capsys.readouterr().err
    assert "pinned reference suite" in err and REFERENCE_SUITE_SHA256[:12] in err
    with Store.open(state["url"]) as store:
        assert store.get_proposal(state["pid"]).gate_verdict is None


def test_the_proposals_own_candidate_is_gated_bound_and_promoted(state, capsys):
    code = run_gate(state, "b.yaml")
    out = capsys.readouterr().out
    with Store.open(state["url"]) as store:
        p = store.get_proposal(state["pid"])
        assert p.state is ProposalState.GATED, out
        assert code == (0 if p.gate_verdict.value == "PASSED" else 1)
        bundle = store.get_evidence(p.evidence_hash).bundle
        assert bundle["candidate"]["content_hash"] == p.candidate_hash == B.content_hash
        assert bundle["baseline"]["content_hash"] == p.baseline_hash
        assert bundle["suite"]["content_hash"] == REFERENCE_SUITE_SHA256
        audit = store.audit_entries(action="gate.run")[-1].payload
        assert audit["baseline_hash"] == p.baseline_hash
        if p.gate_verdict.value in ("FAILED", "ERROR"):
            pytest.skip(f"the fake fleet gave {p.gate_verdict.value}: {out}")
        store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="t")
        store.record_decision(p.proposal_id, approver="owner", decision=Decision.APPROVE,
                              reason="ok")
        assert promote_approved(store, p.proposal_id, actor="t", reason="ok").version == 2
