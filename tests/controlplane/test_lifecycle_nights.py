"""The loop over simulated days, from the naive start: exploration -> canary -> full
promotion, and a bad change stopped at its canary (issue 13, "The loop converges").

The real ``nightly`` and ``verify`` flows run on Prefect's ephemeral API (as in
test_flows.py: simulated telemetry, an in-process fake serving path for the gates). Each
day is simulated under what the store says is served: the active policy, and while a
canary runs, the candidate for the new tasks whose id hashes below its share
(``policies.routing.in_canary``, the gateway's own split), each task's spans carrying the
version that served it.

The workload is sized so that each chapter happens for its own reason: on a first day of
300 tasks (skill 1.3) the naive start's own exploration and shadows leave every cheap-first
routing at high risk for thin support, so night one buys evidence (at 800 tasks the
shadowed paths already decide a cheap-first routing and night one goes straight to a
canary, as at 2000 in test_flows.py); later days have 800. The bad change is one the
nightly itself proposes whose canary tasks go far worse than predicted (its share of the
day simulated with skill 0.8: the tiers got worse at those tasks), which is what a canary
is for.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.manifest import sha256_file

pytestmark = pytest.mark.integration

TASKS = 800  # a day's tasks
FIRST_TASKS = 300  # the naive start's one day: too thin for a cheap-first routing
SKILL = 1.3
BAD_SKILL = 0.8  # the realised day of the bad change's canary tasks
STEPS = [0.25, 0.5, 1.0]
FIRST_DAY = "2026-11-20"
SEARCH = {"executor": "inline", "trials": 4, "per_trial": 16, "bootstrap": 100}
MAX_CANARY_DAYS = 3
STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter"


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def _state_dir(root) -> Any:
    """The starter fleet (fake weight files) and the naive policy, with an exploration
    auto-approval rule, ``owner`` as platform owner and three canary steps."""
    from controlplane.bootstrap import initialise_state
    from controlplane.settings import AutoApprovalRule, StateDir

    state = StateDir(root)
    naive = root / "naive.yaml"
    naive.write_text((STARTER / "naive_policy.yaml").read_text().replace(
        "  gates: {}", "  gates: {non_inferiority_margin: 0.1}"))
    fleet_file = root / "fleet-src.yaml"
    fleet_doc = yaml.safe_load((STARTER / "fleet.yaml").read_text())
    for tier in fleet_doc["spec"]["tiers"]:
        for variant in tier["variants"]:
            folder = root / variant["weights"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "weights.bin").write_bytes(tier["name"].encode() * 64)
            variant["files"] = {"weights.bin": sha256_file(folder / "weights.bin")}
    fleet_file.write_text(yaml.safe_dump(fleet_doc))
    initialise_state(state, fleet_file=fleet_file, policy_file=naive)
    settings = state.settings()
    state.save_settings(settings.model_copy(update={
        "platform_owners": ["owner"],
        "auto_approve": [AutoApprovalRule(lever="exploration")],
        "rollout": settings.rollout.model_copy(update={"steps": STEPS})}))
    return state


def _served_day(state, fleet, day: str, seed: int, *, canary_skill: float | None = None,
                tasks: int = TASKS
                ) -> tuple[dict[int, int], int]:
    """Simulate ``day`` under what the store serves: tasks per policy version, and the
    shadow attempts run."""
    from contracts.spans import SPAN_ATTEMPT, SPAN_TASK, Attr, Purpose
    from policies.routing import in_canary
    from store import Store
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    with Store.open(state.store_url()) as store:
        active = store.active_policy().policy
        rollout = store.current_rollout()
        canary = None if rollout is None else store.get_policy(rollout.candidate_version).policy

    def keep(span, on_canary: bool) -> bool:
        return rollout is None or in_canary(span["attributes"][Attr.TASK_ID],
                                            rollout.share) == on_canary

    shape = WorkloadShape(tasks=tasks, day=day, seed=seed, skill=SKILL)
    spans = [s for s in simulate_spans(active, fleet, shape) if keep(s, False)]
    if canary is not None:
        # Another seed: the two streams never share a trace id.
        shape = WorkloadShape(tasks=tasks, day=day, seed=seed + 1000,
                              skill=canary_skill or SKILL)
        spans += [s for s in simulate_spans(canary, fleet, shape) if keep(s, True)]
    write_spans(iter(spans), state.spans_dir / f"{day}.jsonl")
    served = Counter(int(s["attributes"][Attr.POLICY_VERSION]) for s in spans
                     if s["name"] == SPAN_TASK)
    shadows = sum(1 for s in spans if s["name"] == SPAN_ATTEMPT
                  and s["attributes"][Attr.PURPOSE] == str(Purpose.SHADOW))
    return dict(served), shadows


def _gates(state):
    """A fresh fake serving path per night: its call log travels in the flow run's
    parameters, which Prefect caps at 512 kB."""
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


def _snapshot(state) -> dict[str, Any]:
    from store import Store

    with Store.open(state.store_url()) as store:
        rollout = store.current_rollout()
        return {"active": store.active_policy().version,
                "rollout": None if rollout is None else rollout.as_dict(),
                "states": {p.proposal_id: p.state.value for p in store.list_proposals()}}


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Drive the days and nights once; the tests read what happened. The driving never
    asserts: a chapter that did not happen fails its own test, saying what did."""
    from contracts.manifest import load_fleet
    from controlplane.flows import nightly, verify
    from controlplane.loop.waiting import prefect_environment
    from store import Store

    state = _state_dir(tmp_path_factory.mktemp("lifecycle"))
    fleet = load_fleet(state.fleet_path)
    os.environ.pop("PREFECT_HOME", None)
    prefect_environment(state)
    out: dict[str, Any] = {"state": state, "served": {}, "shadows": {}, "nights": {},
                           "after": {}}
    seed = iter(range(3, 100))

    def night(name: str, day: str) -> None:
        out["nights"][name] = nightly(state_dir=str(state.root), since=day, until=day,
                                      levers=["routing"], approver="owner", search=SEARCH,
                                      gate_serving=_gates(state))
        out["after"][name] = _snapshot(state)

    def canary_days(name: str, day: str, canary_skill: float | None) -> str:
        """Days under the running canary, one verify look after each (the canary's
        tasks against the control's, from the canary's first day)."""
        out[name] = []
        first = None
        for _ in range(MAX_CANARY_DAYS):
            with Store.open(state.store_url()) as store:
                if store.current_rollout() is None:
                    break
            day = _next_day(day)
            first = first or day
            out["served"][day], out["shadows"][day] = _served_day(
                state, fleet, day, next(seed), canary_skill=canary_skill)
            look = verify(state_dir=str(state.root), since=first, until=day)
            out[name].append({"day": day, "result": look, "after": _snapshot(state)})
        return day

    day = FIRST_DAY
    out["served"][day], out["shadows"][day] = _served_day(state, fleet, day, next(seed),
                                                          tasks=FIRST_TASKS)
    night("explore", day)
    day = _next_day(day)
    out["served"][day], out["shadows"][day] = _served_day(state, fleet, day, next(seed))
    out["explore_verify"] = verify(state_dir=str(state.root), since=day, until=day)
    night("saving", day)
    day = canary_days("saving_looks", day, None)
    night("next", day)
    day = canary_days("bad_looks", day, BAD_SKILL)
    night("after_abort", day)
    return out


def _only_proposal(summary: dict[str, Any]) -> dict[str, Any]:
    assert len(summary["proposals"]) == 1, summary.get("proposals") or summary
    return summary["proposals"][0]


def _store(story):
    from store import Store

    return Store.open(story["state"].store_url())


def test_night_one_buys_evidence_within_its_budget_and_it_serves_at_once(story):
    """Every cheap-first routing is blocked by thin evidence from the naive start: the
    night proposes an exploration change with a dollar budget; the rule for the exploration
    lever approves it, and the lever is exempt from the canary (shadows never reach a
    caller), so it is promoted at once."""
    summary = story["nights"]["explore"]
    assert summary["observed"]["tasks"] == FIRST_TASKS
    plan = summary["exploration"]
    assert plan and plan["chosen"], (plan, summary.get("skipped_candidates"))
    reasons = [why for _hash, why in summary["skipped_candidates"]]
    assert any(why.startswith("risk high (thin support") for why in reasons), reasons
    assert plan["blocked"] and {b["lever"] for b in plan["blocked"]} == {"routing"}
    entry = _only_proposal(summary)
    assert entry["gates"] == "PASSED" and "canary" not in entry
    assert entry["decision"]["via"] == "auto-approval"
    assert entry["decision"]["by"] == "auto_approve[exploration]"
    assert entry["active_version"] == 2 == story["after"]["explore"]["active"]
    assert story["after"]["explore"]["rollout"] is None
    with _store(story) as store:
        p = store.get_proposal(entry["proposal_id"])
        assert p.lever == "exploration" and p.baseline_version == 1
        assert p.candidate_version == 2 and p.evidence_hash
        assert store.get_rollout(p.proposal_id) is None  # never a canary
        budget = p.predicted.exploration
        assert budget is not None and budget.within_budget
        assert 0 < budget.usd_per_day <= budget.budget_usd_per_day
        share = story["state"].settings().exploration.budget_share
        assert budget.budget_usd_per_day == pytest.approx(
            share * summary["observed"]["spend_total"], rel=0.1)
        policy = store.get_policy(2).policy
        activations = store.audit_entries(subject="policy/v2", action="policy.activate")
    assert policy.spec.routing.shadow_rate == pytest.approx(plan["rate"])
    assert set(policy.spec.routing.shadow_tiers) == set(plan["tiers"]) and "L" not in plan["tiers"]
    assert [a.payload["proposal_id"] for a in activations] == [entry["proposal_id"]]

    # The day served under it: every task on v2, shadowed at the rate the budget bought,
    # and the shadow calls added cost no more than the budget (the prediction also prices
    # each shadow's verification, which the ledger books as verifier spend).
    day2 = _next_day(FIRST_DAY)
    assert story["served"][day2] == {2: TASKS}
    assert story["shadows"][day2] / TASKS == pytest.approx(plan["rate"], abs=0.05)
    assert story["shadows"][day2] > 2 * story["shadows"][FIRST_DAY]
    extra = (story["nights"]["saving"]["observed"]["spend_eval"]
             - summary["observed"]["spend_eval"])
    assert 0 < extra <= budget.budget_usd_per_day
    look = story["explore_verify"]
    assert look["proposal_id"] == entry["proposal_id"]
    assert look["stats"]["candidate_tasks"] == TASKS
    assert look["outcome"] in ("keep_watching", "verified"), look["message"]


def test_the_next_night_finds_a_saving_and_the_canary_steps_it_to_full_promotion(story):
    """After a day logged under the exploration, the evidence bought decides the blocked
    specs; a cheap-first routing is gated, approved by the named owner and starts as a 25%
    canary; verify advances it to 50%, then promotes it to 100%."""
    from policies.routing import tier_plan

    summary = story["nights"]["saving"]
    assert summary.get("exploration_bought"), summary.get("exploration_bought")
    assert all(b["support"][1] > b["support"][0] for b in summary["exploration_bought"])
    # What it bought is reported per blocked spec: support before -> after (above), the
    # interval widths, and whether its Green PRs are decided yet.
    assert all(len(b["cost_interval_width"]) == 2 and b["decided"] in (
        "non-inferior", "inferior", "open") for b in summary["exploration_bought"])
    entry = _only_proposal(summary)
    assert entry["gates"] == "PASSED"
    assert entry["decision"] == {"approve": True, "by": "owner", "via": "named approver",
                                 "reason": "approved by owner (non-interactive run)"}
    canary = entry["canary"]
    assert canary["share"] == STEPS[0] and canary["step"] == 1 and entry["state"] == "canary"
    assert canary["baseline_version"] == 2 and canary["candidate_version"] == 3
    assert story["after"]["saving"]["active"] == 2  # the canary runs beside the active
    pid = entry["proposal_id"]
    with _store(story) as store:
        p = store.get_proposal(pid)
        assert p.lever == "routing" and p.gate_verdict.value == "PASSED" and p.evidence_hash
        assert p.predicted.cost_per_green_pr_rel_delta <= -0.02
        assert p.predicted.cost_per_green_pr_rel_delta_ci[1] < 0
        candidate, active = store.get_policy(3).policy, store.get_policy(2).policy
        rollout = store.get_rollout(pid)
        advances = store.audit_entries(subject=pid, action="rollout.advance")
        looks = store.audit_entries(subject=pid, action="rollout.look")
        activations = store.audit_entries(subject="policy/v3", action="policy.activate")
        calibration = [c for c in store.calibration_records() if c.proposal_id == pid]
    # Cheap first: where the active policy starts a task on L, the candidate starts below.
    families = ("expr_eval", "list_ops", "bracket_fix", "assert_value")
    features = {"difficulty": 2, "size": 6}
    assert all(tier_plan(active, f, features)[0].tier == "L" for f in families)
    assert all(tier_plan(candidate, f, features)[0].tier != "L" for f in families)

    steps = story["saving_looks"]
    assert [s["result"]["outcome"] for s in steps] == ["advance", "complete"], \
        [s["result"]["message"] for s in steps]
    first, second = steps
    assert first["result"]["share"] == 0.25 and first["result"]["share_after"] == 0.5
    assert first["after"]["rollout"]["share"] == 0.5 and first["after"]["active"] == 2
    assert second["result"]["share"] == 0.5 and second["result"]["active_version"] == 3
    assert second["after"]["active"] == 3 and second["after"]["rollout"] is None
    assert second["after"]["states"][pid] == "active"
    # Each look judged the canary's tasks against the control's, by the version on the spans.
    served = [story["served"][s["day"]] for s in steps]
    assert set(served[0]) == {2, 3} and 0.15 < served[0][3] / TASKS < 0.35
    assert 0.4 < served[1][3] / TASKS < 0.6
    assert first["result"]["stats"]["candidate_tasks"] == served[0][3]
    assert second["result"]["stats"]["candidate_tasks"] == served[0][3] + served[1][3]
    assert rollout.state == "completed" and rollout.share == 1.0 and rollout.step == 2
    assert [a.payload["to"] for a in advances] == [0.5]
    assert [x.payload["action"] for x in looks] == ["advance", "complete"]
    assert [a.payload["proposal_id"] for a in activations] == [pid]
    assert activations[0].actor == "autopilot-verify"
    assert len(calibration) == 2


def test_a_bad_change_is_stopped_at_its_canary_and_never_proposed_again(story):
    """The night after the promotion proposes another change; its canary tasks regress,
    so the first look aborts it at 25%: the proposal ends rolled back, the promoted policy
    never stopped serving, and the next night does not propose that spec again."""
    from controlplane.loop.nightly import not_again

    entry = _only_proposal(story["nights"]["next"])
    assert entry["gates"] == "PASSED" and entry["state"] == "canary"
    assert entry["canary"]["baseline_version"] == 3 and entry["canary"]["share"] == 0.25
    bad = entry["proposal_id"]
    version = entry["canary"]["candidate_version"]
    looks = story["bad_looks"]
    assert [s["result"]["outcome"] for s in looks] == ["abort"], \
        [s["result"]["message"] for s in looks]
    stopped = looks[0]
    assert "canary stopped at 25%" in stopped["result"]["message"]
    assert stopped["result"]["stats"]["rel_delta_ci"][0] > 0.05  # significantly costlier
    assert stopped["result"]["share_after"] == 0.0
    assert stopped["after"]["active"] == 3 and stopped["after"]["rollout"] is None
    assert stopped["after"]["states"][bad] == "rolled_back"
    assert story["served"][stopped["day"]].get(version, 0) > 0
    with _store(story) as store:
        p = store.get_proposal(bad)
        assert p.lever in ("routing", "guardrails") and p.predicted.cost_per_green_pr_rel_delta < 0
        assert store.get_rollout(bad).state == "aborted"
        assert not store.audit_entries(subject=f"policy/v{version}", action="policy.activate")
        moved = store.audit_entries(subject=bad, action="proposal.rolled_back")
        assert moved and moved[0].payload["stopped_at_canary"] is True
        active = store.get_policy(3).policy
        barred = not_again(store.list_proposals(), window_label="a later window",
                           active_version=3, active_hash=active.content_hash)
        later = [store.get_proposal(e["proposal_id"])
                 for e in story["nights"]["after_abort"]["proposals"]]
    assert barred.get(p.candidate_hash, "").startswith("rolled_back against this baseline")
    # The next night searched again from the same active policy and did not propose the
    # spec (where its search ranked it again, it passed over it saying why).
    summary = story["nights"]["after_abort"]
    assert summary.get("searched"), summary
    assert all(q.candidate_hash != p.candidate_hash for q in later)
    skipped = dict(summary.get("skipped_candidates") or [])
    if p.candidate_hash[:12] in skipped:
        assert skipped[p.candidate_hash[:12]].startswith(
            f"rolled_back against this baseline ({bad})"), skipped


def test_the_audit_log_of_the_whole_story_is_intact(story):
    from store import Store

    with Store.open(story["state"].store_url()) as store:
        assert store.verify_audit().ok
        states = {p.proposal_id: p.state.value for p in store.list_proposals()}
    assert "rolled_back" in states.values() and "active" in states.values()
