"""`autopilot gate` end to end on a real state directory and store, with the serving path
replaced by the in-process fake (the real fleet is in test_gates_integration.py)."""

import json

import pytest
from click.testing import CliRunner
from gates_testkit import competent, make_policy, write_fleet

import gates.port
from controlplane.cli import cli
from controlplane.loop.gating import plan_candidate_version
from gates.fakes import FakeServingPath
from gates.suite import save_suite
from store import Store


class StoredPolicies:
    """Policies by version, read from the store the command writes (as the gateway does)."""

    def __init__(self, url):
        self.url = url
        self.seen = {}

    def __getitem__(self, version):
        if version not in self.seen:
            with Store.open(self.url) as store:
                self.seen[version] = store.get_policy(version).policy
        return self.seen[version]


@pytest.fixture
def state(tmp_path, suite, monkeypatch):
    fleet = write_fleet(tmp_path / "fleet")
    policy_file = tmp_path / "active.yaml"
    policy_file.write_text(make_policy(1).to_yaml())
    root = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(root), "init", "--fleet", str(fleet),
                                      "--policy", str(policy_file)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    suite_file = save_suite(suite, tmp_path / "suite.json")
    url = f"sqlite:///{root / 'autopilot.db'}"
    monkeypatch.setattr(gates.port, "GatewayServingPath",
                        lambda base_url: FakeServingPath(policies=StoredPolicies(url),
                                                         answer=competent))
    return {"root": root, "fleet": fleet, "suite": suite_file, "tmp": tmp_path, "url": url}


def gate(state, candidate, *extra, as_json=False):
    path = state["tmp"] / "candidate.yaml"
    path.write_text(candidate.to_yaml())
    head = ["--state-dir", str(state["root"])] + (["--json"] if as_json else [])
    return CliRunner().invoke(cli, [*head, "gate", "--candidate", str(path), "--suite",
                                    str(state["suite"]), "--fleet", str(state["fleet"]),
                                    "--url", "http://gateway.invalid", *extra],
                              catch_exceptions=False)


def test_active_policy_passes_against_itself(state):
    result = gate(state, make_policy(1))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in ("pinned_weights", "reproducibility", "quality_non_inferiority",
                 "cost_latency", "cache_safety", "guardrails"):
        assert any(line.startswith(name) and "PASSED" in line for line in lines), result.output
    assert "candidate spec is stored as v1" in result.output
    files = list((state["root"] / "reports" / "evidence").glob("*.json"))
    assert len(files) == 1 and files[0].name in result.output


def test_degraded_candidate_fails_and_exits_nonzero_unless_dry_run(state):
    cand = make_policy(2, quantization={"M": "int4", "L": "int4"})
    result = gate(state, cand)
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("quality_non_inferiority"))
    assert "FAILED" in line and "vs 1.000 on 90 cases" in line
    assert "stored candidate as v2" in result.output
    dry = gate(state, cand, "--dry-run")
    assert dry.exit_code == 0 and "dry run: not blocking" in dry.output
    assert "candidate spec is stored as v2" in dry.output
    with Store.open(state["url"]) as store:
        assert [e.payload["dry_run"] for e in store.audit_entries(action="gate.run")] == [
            False, True]


def test_taken_version_is_renumbered_and_json_output(state):
    cand = make_policy(1, quantization={"S": "int4"})  # v1 is taken by the active spec
    result = gate(state, cand, as_json=True)
    data = json.loads(result.output)
    assert data["candidate_version"] == 2 and data["overall"] in ("FAILED", "PASSED",
                                                                  "INCONCLUSIVE")
    assert data["gates"][0]["name"] == "pinned_weights"
    assert len(data["bundle_hash"]) == 64


def test_tampered_weight_fails_naming_the_file(state):
    target = state["fleet"].parent / "models" / "S" / "bf16" / "model.safetensors"
    target.write_bytes(b"swapped")
    result = gate(state, make_policy(1))
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("pinned_weights"))
    assert "FAILED" in line and str(target) in line


def test_plan_candidate_version():
    stored = [(1, "a"), (2, "b")]
    assert plan_candidate_version(stored, 5, "b") == ("reuse", 2)
    assert plan_candidate_version(stored, 3, "c") == ("store", 3)
    assert plan_candidate_version(stored, 2, "c") == ("renumber", 3)


def test_fleet_that_cannot_start_gives_error_gates_and_still_records(state, monkeypatch):
    import serving.fleet

    def no_fleet(*_a, **_k):
        raise RuntimeError("no engine")

    monkeypatch.setattr(serving.fleet, "start_fleet", no_fleet)
    path = state["tmp"] / "candidate.yaml"
    path.write_text(make_policy(1).to_yaml())
    result = CliRunner().invoke(cli, ["--state-dir", str(state["root"]), "gate", "--candidate",
                                      str(path), "--suite", str(state["suite"]), "--fleet",
                                      str(state["fleet"])], catch_exceptions=False)
    assert result.exit_code == 1
    assert "serving path unavailable: RuntimeError: no engine" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("reproducibility"))
    assert "ERROR" in line and "no engine" in line
    assert next(x for x in result.output.splitlines() if x.startswith("overall")).split()[1] \
        == "ERROR"
    assert list((state["root"] / "reports" / "evidence").glob("*.json"))


def test_bad_candidate_is_refused_naming_the_field(state, capsys):
    from controlplane.cli import main

    path = state["tmp"] / "bad.yaml"
    path.write_text(make_policy(2).to_yaml().replace("max_attempts: 3", "max_attempts: 0"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--state-dir", str(state["root"]), "gate", "--candidate", str(path),
              "--url", "http://gateway.invalid"])
    assert exit_info.value.code == 2
    assert "spec.routing.max_attempts" in capsys.readouterr().err
    with Store.open(state["url"]) as store:
        assert [r.version for r in store.list_policies()] == [1]  # nothing stored


def _proposal(state, candidate):
    from controlplane.loop.gating import store_candidate

    with Store.open(state["url"]) as store:
        stored, _ = store_candidate(store, candidate, baseline_version=1)
        return store.create_proposal(candidate_version=stored.metadata.version,
                                     baseline_version=1, lever="quantization",
                                     window="2026-11-20", actor="test").proposal_id


def test_a_gate_run_that_cannot_happen_records_error_in_the_one_schema(state):
    from controlplane.loop.gating import GivenServing, gate_proposal
    from controlplane.settings import StateDir
    from gates.evidence import SCHEMA, SCHEMA_VERSION

    pid = _proposal(state, make_policy(2, quantization={"S": "int4"}))
    root = StateDir(state["root"])
    root.fleet_path.unlink()  # the run cannot even load its fleet
    lines: list[str] = []
    with Store.open(state["url"]) as store:
        verdict = gate_proposal(root, store, pid, serving=GivenServing(object()),
                                echo=lines.append)
        assert verdict == "ERROR"
        # A rerun never gates twice: the recorded verdict stands.
        assert gate_proposal(root, store, pid, serving=GivenServing(object()),
                             echo=lines.append) == "ERROR"
        proposal = store.get_proposal(pid)
        bundle = store.get_evidence(proposal.evidence_hash).bundle
        audit = store.audit_entries(action="gate.run")
    assert proposal.gate_verdict.value == "ERROR"
    assert (bundle["schema"], bundle["schema_version"]) == (SCHEMA, SCHEMA_VERSION)
    assert bundle["overall"] == "ERROR" and bundle["candidate"]["version"] == 2
    assert bundle["gates"][0]["name"] == "runner" and "fleet.yaml" in bundle["gates"][0]["message"]
    assert audit[-1].payload["overall"] == "ERROR"
    assert any("gates could not run" in line for line in lines)
    assert sum("gates could not run" in line for line in lines) == 1


def test_a_gated_proposal_passes_through_the_same_adapter(state):
    from controlplane.loop.gating import GivenServing, gate_proposal
    from controlplane.settings import StateDir

    pid = _proposal(state, make_policy(2, routing={"router": "fixed", "escalation": ["M", "L"],
                                                   "max_attempts": 3}))
    serving = FakeServingPath(policies=StoredPolicies(state["url"]), answer=competent)
    lines: list[str] = []
    with Store.open(state["url"]) as store:
        verdict = gate_proposal(StateDir(state["root"]), store, pid,
                                serving=GivenServing(serving), echo=lines.append)
    assert verdict in ("PASSED", "INCONCLUSIVE"), lines
    assert any(line.strip().startswith("reproducibility") for line in lines)
    with Store.open(state["url"]) as store:
        bundle = store.get_evidence(store.get_proposal(pid).evidence_hash).bundle
    assert bundle["schema_version"] == 2 and bundle["runs"]
