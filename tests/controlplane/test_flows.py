"""The nightly and verify flows for real on Prefect's ephemeral API, with simulated
telemetry and an in-process serving path for the gates (the fleet's own integration tests
cover the real serving path)."""

from __future__ import annotations

import os

import pytest
import yaml

from contracts.manifest import sha256_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.loop.waiting import prefect_environment
    from controlplane.settings import StateDir
    from store import Store
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    root = tmp_path_factory.mktemp("flows")
    state = StateDir(root)
    naive = root / "naive.yaml"
    naive.write_text(open("controlplane/starter/naive_policy.yaml").read().replace(
        "  gates: {}", "  gates: {non_inferiority_margin: 0.1}"))
    fleet_file = root / "fleet-src.yaml"
    fleet_doc = yaml.safe_load(open("controlplane/starter/fleet.yaml"))
    for tier in fleet_doc["spec"]["tiers"]:
        for variant in tier["variants"]:
            folder = root / variant["weights"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "weights.bin").write_bytes(tier["name"].encode() * 64)
            variant["files"] = {"weights.bin": sha256_file(folder / "weights.bin")}
    fleet_file.write_text(yaml.safe_dump(fleet_doc))
    initialise_state(state, fleet_file=fleet_file, policy_file=naive)
    settings = state.settings().model_copy(update={"platform_owners": ["owner"]})
    state.save_settings(settings)
    store = Store.open(state.store_url())
    policy = store.active_policy().policy
    write_spans(simulate_spans(policy, load_fleet(state.fleet_path),
                               WorkloadShape(tasks=2500, day="2026-11-20", seed=3, skill=3.0)),
                state.spans_dir / "day1.jsonl")
    os.environ.pop("PREFECT_HOME", None)
    prefect_environment(state)
    return state


@pytest.fixture()
def fake_gates(state):
    """The gates' serving port for the flow: an in-process fake over the stored policies."""
    from controlplane.loop.gating import GivenServing
    from gates.fakes import FakeServingPath
    from store import Store

    class StoredPolicies(dict):
        def __missing__(self, version):
            with Store.open(state.store_url()) as store:
                self[version] = store.get_policy(version).policy
            return self[version]

    def answer(case, tier, variant, attempt):
        return case.expected if tier in ("M", "L") or case.difficulty == 1 else "wrong"

    return GivenServing(FakeServingPath(StoredPolicies(), answer))


def test_nightly_proposes_gates_approves_and_starts_a_canary_once(state, fake_gates):
    """The approved change serves 25% of new tasks beside the active policy (the default
    rollout steps); a rerun over the same window, and any night while the canary runs,
    proposes nothing new."""
    from controlplane.flows import nightly
    from store import Store

    search = {"executor": "inline", "trials": 4, "per_trial": 16, "bootstrap": 100}
    result = nightly(state_dir=str(state.root), since="2026-11-20", until="2026-11-20",
                     levers=["routing"], approver="owner", search=search,
                     gate_serving=fake_gates)
    assert result["observed"]["tasks"] == 2500
    with Store.open(state.store_url()) as store:
        proposals = store.list_proposals()
        assert proposals, (result.get("skipped_candidates"), result.get("searched"))
        gated = [p for p in proposals if p.gate_verdict is not None]
        assert gated and all(p.evidence_hash for p in gated)
        active = store.active_policy()
        rollout = store.current_rollout()
    started = [e for e in result["proposals"] if "canary" in e]
    assert len(started) == 1, result["proposals"]
    assert active.version == 1  # the active pointer has not moved: a canary runs beside it
    assert rollout is not None and rollout.share == 0.25
    assert rollout.proposal_id == started[0]["proposal_id"] and started[0]["state"] == "canary"
    assert os.path.exists(started[0]["report"]["markdown"])
    assert started[0]["decision"]["by"] == "owner"

    for window in ("2026-11-20", "2026-11-21"):
        again = nightly(state_dir=str(state.root), since=window, until=window,
                        levers=["routing"], approver="owner", search=search,
                        gate_serving=fake_gates)
        assert "canary of " + rollout.proposal_id in again["skipped"], again
    with Store.open(state.store_url()) as store:
        assert len(store.list_proposals()) == len(proposals)
        assert store.active_policy().version == 1
        assert store.current_rollout() == rollout
