"""The gateway's shared state without Ray (issue 15, defect 7): two ``GatewayCore``s (two
replicas) over one state agree on routes and budgets, and the state's owner keeps what it
recorded in the store.

Before: each replica kept its own ledger, routes and cache, so two replicas let a team
spend twice its budget, a task's second attempt could start a new plan on the other
replica, and a restart forgot the day's spend.
"""

from __future__ import annotations

import asyncio

import pytest

from contracts.guardrails import Cap, GuardrailRefusal
from contracts.manifest import load_fleet
from policies.policy import Policy
from serving.gateway_core import GatewayCore, PolicyBook
from serving.guardrails import call_cost_usd, worst_case_cost
from serving.protocol import parse_request
from serving.shared_state import (
    GatewayState,
    GatewayStateActor,
    LocalStateClient,
    state_actor_name,
    worst_case_of,
)
from store import SCOPE_TASK, SCOPE_TEAM, RouteRow, SpendRow, Store

FLEET = load_fleet("controlplane/starter/fleet.yaml")
PROMPT = "eval: 1+2\n="
CALL_USD = call_cost_usd(FLEET, "S", None, input_tokens=len(PROMPT), cached_input_tokens=0,
                         output_tokens=2, cache="miss")
RES_USD = worst_case_cost(FLEET, "S", None, prompt=PROMPT, max_tokens=8)[1]
NOW = 1_800_000_000.0


def policy(guardrails=None, explore=0.0):
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M", "L"],
                             "max_attempts": 3, "exploration_rate": explore},
                 "guardrails": guardrails or {}}})


class SlowTiers:
    async def __call__(self, key, request):
        await asyncio.sleep(0.01)
        return {"text": "3", "input_tokens": len(request["prompt"]), "output_tokens": 2,
                "cached_input_tokens": 0, "finish_reason": "stop"}


def replicas(p, n=2, state=None):
    state = state or LocalStateClient(GatewayState())
    return [GatewayCore(FLEET, PolicyBook(p, {1: p}.__getitem__), SlowTiers(),
                        clock=lambda: NOW, state=state) for _ in range(n)], state


def req(task_id, attempt=1, team="payments"):
    return parse_request({"prompt": PROMPT, "max_tokens": 8, "autopilot": {
        "task_id": task_id, "attempt": attempt, "family": "expr_eval", "team": team}},
        "completion")


def test_worst_case_numbers_match_the_guardrails_rule():
    for tier in FLEET.tier_names:
        for max_tokens in (0, 1, 8, 300):
            worst = worst_case_of(FLEET, tier, None, PROMPT)
            assert worst.at(max_tokens) == worst_case_cost(FLEET, tier, None, prompt=PROMPT,
                                                           max_tokens=max_tokens)


def test_a_tasks_attempts_on_two_replicas_follow_one_plan():
    (a, b), _ = replicas(policy(explore=0.5))
    tiers = []
    for task in (f"t{i}" for i in range(20)):
        first = asyncio.run(a.complete(req(task, 1)))["autopilot"]
        second = asyncio.run(b.complete(req(task, 2)))["autopilot"]
        tiers.append((first["tier"], second["tier"]))
        assert first["policy_version"] == second["policy_version"]
    # exploration starts some tasks above S; their second attempt escalates from there
    order = ["S", "M", "L"]
    assert all(order.index(s) == order.index(f) + 1 for f, s in tiers if f != "L"), tiers
    assert len({f for f, _ in tiers}) > 1, "exploration should start some tasks elsewhere"


def test_a_route_recorded_by_one_replica_wins_over_another_replicas_proposal():
    (a, b), state = replicas(policy())
    asyncio.run(a.complete(req("r1")))
    recorded = state.state.routes["r1"]
    # b has never seen r1 and a new policy would start it elsewhere: it follows r1's route
    b.policies.swap(Policy.model_validate({**policy().model_dump(mode="json"),
                                           "metadata": {"version": 2, "author": "t",
                                                        "created": "2026-01-02T00:00:00Z"}}))
    b.policies._versions[1] = a.policies.active
    out = asyncio.run(b.complete(req("r1", 2)))["autopilot"]
    assert out["policy_version"] == recorded.policy_version == 1 and out["tier"] == "M"


async def _wave(cores, requests):
    async def one(i, r):
        try:
            return await cores[i % len(cores)].complete(r)
        except GuardrailRefusal as exc:
            return exc

    return await asyncio.gather(*[one(i, r) for i, r in enumerate(requests)])


@pytest.mark.parametrize("concurrency", [16, 32])
def test_two_replicas_overspend_a_team_budget_by_at_most_one_reservation(concurrency):
    budget = 6 * CALL_USD
    cores, state = replicas(policy({"team_budgets": {"payments": {"usd_per_day": budget}}}))
    out = asyncio.run(_wave(cores, [req(f"w{i}") for i in range(concurrency)]))
    spent = state.state.ledger.team_spent("payments", cores[0]._day())
    refused = [r for r in out if isinstance(r, GuardrailRefusal)]
    assert spent <= budget + RES_USD, (
        f"spent ${spent:.6f} against a ${budget:.6f} budget; one reservation is ${RES_USD:.6f}")
    assert refused and all(r.code == Cap.TEAM_BUDGET_EXHAUSTED for r in refused)


def test_two_replicas_share_a_tasks_dollar_cap():
    cap = 5.5 * CALL_USD
    (a, b), state = replicas(policy({"max_usd_per_task": cap}))
    served = 0
    with pytest.raises(GuardrailRefusal) as err:
        for i in range(40):
            asyncio.run((a, b)[i % 2].complete(req("capped")))
            served += 1
    assert err.value.code == Cap.MAX_USD_PER_TASK
    assert served == 6, f"{served} calls of ${CALL_USD:.6f} served under a ${cap:.6f} cap"


def test_the_owner_rebuilds_spend_and_routes_from_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    owner = GatewayStateActor(url, flush_interval_s=3600)
    (a, b), _ = replicas(policy({"team_budgets": {"payments": {"usd_per_day": 1.0}}}),
                         state=LocalStateClient(owner.state))
    for i in range(3):
        asyncio.run((a, b)[i % 2].complete(req("kept", attempt=i + 1)))
    day = a._day()
    spent = owner.state.ledger.team_spent("payments", day)
    assert owner.flush() > 0 and owner.flush() == 0
    reborn = GatewayStateActor(url, flush_interval_s=3600)
    # the test's day (2027) is after "yesterday", from when the owner reads team-days back
    assert reborn.state.ledger.team_day_usd == owner.state.ledger.team_day_usd
    assert reborn.state.ledger.team_spent("payments", day) == pytest.approx(spent)
    assert reborn.state.ledger.task("kept").usd == pytest.approx(spent)
    assert reborn.state.ledger.task("kept").calls == 3
    assert reborn.state.ledger.task("kept").last_attempt == 3
    assert reborn.state.routes["kept"] == owner.state.routes["kept"]


def test_the_store_adds_spend_and_keeps_the_first_route(tmp_path):
    with Store.open(f"sqlite:///{tmp_path / 'b.db'}") as store:
        route = RouteRow("t", 1, 0, 1.0, None)
        store.add_gateway_spend([SpendRow(SCOPE_TEAM, "payments", "2027-01-15", 0.5),
                                 SpendRow(SCOPE_TASK, "t", "", 0.5, 10, 1, 1)], [route])
        store.add_gateway_spend([SpendRow(SCOPE_TEAM, "payments", "2027-01-15", 0.25),
                                 SpendRow(SCOPE_TASK, "t", "", 0.25, 5, 1, 2)],
                                [RouteRow("t", 2, 1, 0.5, "M")])
        rows = {(r.scope, r.key, r.day): r for r in
                store.gateway_spend(since_day="2027-01-14", max_tasks=10)}
        assert rows[(SCOPE_TEAM, "payments", "2027-01-15")].usd == pytest.approx(0.75)
        assert rows[(SCOPE_TASK, "t", "")] == SpendRow(SCOPE_TASK, "t", "", 0.75, 15, 2, 2)
        assert store.gateway_spend(since_day="2027-01-16", max_tasks=0) == []
        assert store.gateway_routes(max_tasks=10) == [route]


def test_two_fleets_or_stores_get_their_own_actor_and_no_password_shows():
    a = state_actor_name("postgresql://u:secret@db/x", "fleet-a")
    assert a != state_actor_name("postgresql://u:secret@db/x", "fleet-b")
    assert a != state_actor_name("postgresql://u:secret@db/y", "fleet-a")
    assert "secret" not in a and a.startswith("gateway-state-")


def test_a_ticket_of_a_replaced_ledger_settles_nothing_in_the_new_one():
    """A call in flight when the ledger actor was replaced settles with its old ticket: the
    new ledger must not take it for one of its own reservations."""
    from serving.shared_state import Admission

    guard = policy({"max_usd_per_task": 5.5 * CALL_USD}).spec.guardrails
    worst = worst_case_of(FLEET, "S", "bf16", "eval: 1+2\n=")

    def admitted(state):
        return state.admit(Admission("t", "payments", "2026-11-20", 1, 3, 8, guard,
                                     ((True, worst),)))

    old, new = GatewayState(), GatewayState()
    stale = admitted(old).tickets[0]
    live = admitted(new).tickets[0]
    assert stale != live
    assert new.settle(stale, tokens=10, usd=1.0, attempt=1) is None
    assert new.ledger.team_spent("payments", "2026-11-20") == 0.0
    new.settle(live, tokens=10, usd=CALL_USD, attempt=1)
    assert new.ledger.team_spent("payments", "2026-11-20") == pytest.approx(CALL_USD)
