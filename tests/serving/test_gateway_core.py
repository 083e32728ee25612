"""GatewayCore with a fake tier caller: routing, escalation, propensity, shadow, caps,
cache and policy swaps, without Ray or vLLM."""

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.guardrails import GuardrailRefusal
from contracts.manifest import load_fleet
from policies.policy import Policy
from policies.routing import attempt_tier_probabilities
from serving.gateway_core import GatewayCore, PolicyBook, UnknownModel, task_draws
from serving.protocol import parse_request

FLEET = load_fleet("controlplane/starter/fleet.yaml")


def policy(version=1, **spec):
    base = {"routing": {"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3}}
    return Policy.model_validate({
        "metadata": {"version": version, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {**base, **spec}})


class FakeTiers:
    def __init__(self):
        self.calls = []
        self.gate = None

    async def __call__(self, key, request):
        self.calls.append((key, request))
        if self.gate is not None:
            await self.gate.wait()
        cached = 8 if key.prefix_caching and len(request["prompt"]) > 8 else 0
        return {"text": f"{key.tier}:{request['prompt'][-3:]}", "input_tokens": len(request["prompt"]),
                "output_tokens": 2, "cached_input_tokens": cached, "finish_reason": "stop"}


def make(p, clock=lambda: 1_800_000_000.0):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tiers = FakeTiers()
    versions = {p.metadata.version: p}
    core = GatewayCore(FLEET, PolicyBook(p, versions.__getitem__), tiers,
                       tracer=provider.get_tracer("t"), clock=clock)
    return core, tiers, exporter, versions


def req(task_id, attempt=1, prompt="eval: 1+2\n=", family="expr_eval", **ctx):
    body = {"prompt": prompt, "max_tokens": 8, "stop": ["\n"],
            "autopilot": {"task_id": task_id, "attempt": attempt, "family": family,
                          "team": "payments", **ctx}}
    return parse_request(body, "completion")


def run(coro):
    return asyncio.run(coro)


def test_escalates_along_the_policy_and_refuses_beyond_the_cap():
    core, tiers, spans, _ = make(policy())
    tiers_seen = [run(core.complete(req("t", a)))["autopilot"]["tier"] for a in (1, 2, 3)]
    assert tiers_seen == ["S", "M", "L"]
    with pytest.raises(GuardrailRefusal) as err:
        run(core.complete(req("t", 4)))
    assert err.value.code == "max_attempts_per_task"
    assert len(spans.get_finished_spans()) == 3


def test_exploration_is_seeded_per_task_and_logs_the_exact_propensity():
    p = policy(routing={"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3,
                        "exploration_rate": 0.5})
    core, _, _, _ = make(p)
    probs = attempt_tier_probabilities(p, "expr_eval", {})
    seen = set()
    for i in range(40):
        out = run(core.complete(req(f"task-{i}")))["autopilot"]
        assert out["propensity"] == pytest.approx(probs[0][out["tier"]])
        seen.add(out["tier"])
        again, _, _, _ = make(p)  # another gateway makes the same choice for the task
        assert run(again.complete(req(f"task-{i}")))["autopilot"]["tier"] == out["tier"]
    assert seen == {"S", "M", "L"}
    assert task_draws("x") == task_draws("x") != task_draws("y")


def test_gate_traffic_follows_the_policy_never_its_exploration():
    p = policy(routing={"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3,
                        "exploration_rate": 0.5})
    core, _, _, _ = make(p)
    tiers = {run(core.complete(req(f"gate-{i}", purpose="gate")))["autopilot"]["tier"]
             for i in range(40)}
    assert tiers == {"S"}
    served = {run(core.complete(req(f"task-{i}")))["autopilot"]["tier"] for i in range(40)}
    assert served == {"S", "M", "L"}  # the same ids as serve traffic do explore


def test_shadow_runs_on_another_tier_and_is_its_own_span():
    p = policy(routing={"router": "fixed", "escalation": ["S", "M"], "shadow_rate": 1.0})
    core, tiers, spans, _ = make(p)
    out = run(core.complete(req("t1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                                shadow_traceparent="00-" + "a" * 32 + "-" + "c" * 16 + "-01")))
    ap = out["autopilot"]
    assert ap["tier"] == "S" and ap["shadow"]["tier"] == "M" and ap["shadow"]["text"] == "M:2\n="
    # the shadow's odds (policies.routing.shadow_probability): M is the one tier left
    assert ap["shadow"]["propensity"] == 1.0 and ap["propensity"] == 1.0
    finished = spans.get_finished_spans()
    assert sorted(s.attributes["autopilot.tier"] for s in finished) == ["M", "S"]
    parents = {s.attributes["autopilot.tier"]: f"{s.parent.span_id:016x}" for s in finished}
    assert parents == {"S": "b" * 16, "M": "c" * 16}
    # a later attempt never shadows
    out2 = run(core.complete(req("t1", 2)))
    assert out2["autopilot"]["shadow"] is None
    # shadow spend counts for the team, not the task
    usage = core.ledger.task("t1")
    assert usage.calls == 2


def test_response_cache_hit_and_excluded_family_and_policy_hash_in_key():
    p = policy(cache={"prefix": {"S": True},
                      "response": {"enabled": True, "exclude_families": ["bracket_fix"]}})
    core, tiers, spans, versions = make(p)
    a = run(core.complete(req("a")))["autopilot"]
    b = run(core.complete(req("b")))["autopilot"]
    assert a["cache"] == "prefix" and b["cache"] == "response" and b["cost_usd"] == 0.0
    assert len(tiers.calls) == 1
    run(core.complete(req("c", family="bracket_fix")))
    d = run(core.complete(req("d", family="bracket_fix")))["autopilot"]
    assert d["cache"] != "response" and len(tiers.calls) == 3
    # a new policy version with another spec: its hash is in the key, so no hit
    p2 = policy(2, routing={"router": "fixed", "escalation": ["S", "M"]},
                cache=p.spec.cache.model_dump())
    core.policies.swap(p2)
    e = run(core.complete(req("e")))["autopilot"]
    assert e["cache"] != "response" and e["policy_version"] == 2
    attrs = [s.attributes for s in spans.get_finished_spans()]
    assert [x["autopilot.cache"] for x in attrs][:2] == ["prefix", "response"]


def test_token_and_team_budget_caps_fail_closed():
    p = policy(guardrails={"max_tokens_per_task": 20,
                           "team_budgets": {"payments": {"usd_per_day": 1e-6}}})
    core, _, _, _ = make(p)
    run(core.complete(req("t", 1, prompt="x" * 30)))  # 32 tokens: over the task cap now
    with pytest.raises(GuardrailRefusal) as err:
        run(core.complete(req("t", 2)))
    assert err.value.code == "max_tokens_per_task"
    with pytest.raises(GuardrailRefusal) as err:
        run(core.complete(req("other", 1)))
    assert err.value.code == "team_budget_exhausted"


def test_in_flight_request_keeps_its_policy_across_a_swap():
    core, tiers, _, _ = make(policy())

    async def scenario():
        tiers.gate = asyncio.Event()
        pending = asyncio.create_task(core.complete(req("slow")))
        await asyncio.sleep(0.01)
        core.policies.swap(policy(2, routing={"router": "fixed", "escalation": ["M", "L"]}))
        fresh = asyncio.create_task(core.complete(req("fresh")))
        await asyncio.sleep(0.01)
        tiers.gate.set()
        return await pending, await fresh

    slow, fresh = run(scenario())
    assert (slow["autopilot"]["policy_version"], slow["autopilot"]["tier"]) == (1, "S")
    assert (fresh["autopilot"]["policy_version"], fresh["autopilot"]["tier"]) == (2, "M")


def test_named_policy_version_and_direct_tier_model():
    core, _, _, versions = make(policy())
    versions[7] = policy(7, routing={"router": "fixed", "escalation": ["L"]})
    out = run(core.complete(req("g", purpose="gate", policy_version=7)))["autopilot"]
    assert (out["tier"], out["policy_version"]) == ("L", 7)
    direct = parse_request({"model": "M", "prompt": "p", "autopilot": {"task_id": "z"}},
                           "completion")
    assert run(core.complete(direct))["autopilot"]["tier"] == "M"
    with pytest.raises(UnknownModel):
        run(core.complete(parse_request({"model": "XL", "prompt": "p"}, "completion")))


def test_clock_offset_moves_span_times_never_the_budget_day():
    # The budget day is the gateway's clock: a client's offset (issue 14, defect 4) moves
    # only the span times (a simulated day's calls line up with its tasks).
    core, _, spans, _ = make(policy(), clock=lambda: 1_800_000_000.0)
    day = 86_400 * 10**9
    run(core.complete(req("t", clock_offset_ns=day)))
    [span] = spans.get_finished_spans()
    import time as _time
    assert span.start_time > _time.time_ns() + day - 60 * 10**9
    assert core.ledger.team_spent("payments", core._day()) > 0
    assert list(core.ledger.team_day_usd) == [("payments", "2027-01-15")]


def test_a_canary_serves_its_share_of_new_tasks_and_each_task_keeps_its_version():
    from policies.routing import in_canary

    active = policy(version=1)
    canary = policy(version=2, routing={"router": "fixed", "escalation": ["M", "L"],
                                        "max_attempts": 2})
    core, _, spans, versions = make(active)
    versions[2] = canary
    core.policies.set_canary(canary, 0.3)
    ids = [f"task-{i}" for i in range(200)]
    served = {t: run(core.complete(req(t)))["autopilot"] for t in ids}
    on_canary = [t for t in ids if served[t]["policy_version"] == 2]
    assert {served[t]["tier"] for t in on_canary} == {"M"}
    assert on_canary == [t for t in ids if in_canary(t, 0.3)]
    assert 0.2 < len(on_canary) / len(ids) < 0.4
    # A later attempt of a canary task stays on the canary (escalates along its order).
    t = on_canary[0]
    assert run(core.complete(req(t, 2)))["autopilot"]["tier"] == "L"
    # Gate traffic never lands on the canary; stopping it sends new tasks to the active.
    assert run(core.complete(req("gate-x", purpose="gate")))["autopilot"]["policy_version"] == 1
    core.policies.set_canary(None)
    assert all(run(core.complete(req(f"new-{i}")))["autopilot"]["policy_version"] == 1
               for i in range(20))
    # Raising the share keeps every earlier canary task in the canary.
    assert all(in_canary(t, 0.5) for t in on_canary)


def test_a_familys_shadow_may_run_an_adapter_it_is_not_served_with():
    """A family's ``shadow_adapters``: the list-ops adapter on S shadows the plain S attempt
    it sits beside (what an exploration for a distillation buys); other families' shadows
    run without it."""
    from serving.testing import tiny_manifest

    p = policy(routing={"router": "fixed", "escalation": ["S", "M"], "shadow_tiers": ["S"],
                        "families": {"list_ops": {"shadow_rate": 1.0,
                                                  "shadow_adapters": {"S": "list-ops-v1"}}}})
    tiers = FakeTiers()
    core = GatewayCore(tiny_manifest(), PolicyBook(p, {1: p}.__getitem__), tiers,
                       tracer=TracerProvider().get_tracer("t"), clock=lambda: 1_800_000_000.0)
    ap = run(core.complete(req("t1", family="list_ops")))["autopilot"]
    assert (ap["tier"], ap["adapter"]) == ("S", None)
    assert (ap["shadow"]["tier"], ap["shadow"]["adapter"]) == ("S", "list-ops-v1")
    assert ap["shadow"]["propensity"] == 1.0


def test_a_shadow_may_run_another_variant_of_the_first_tier():
    """``shadow_variants``: int8 of S shadows the bf16 S attempt it sits beside (what an
    exploration for a quantization buys), priced and logged as that variant."""
    from serving.testing import tiny_manifest

    p = policy(routing={"router": "fixed", "escalation": ["S", "M"], "shadow_rate": 1.0,
                        "shadow_tiers": ["S"], "shadow_variants": {"S": "int8"}})
    tiers = FakeTiers()
    core = GatewayCore(tiny_manifest("variants"), PolicyBook(p, {1: p}.__getitem__), tiers,
                       tracer=TracerProvider().get_tracer("t"), clock=lambda: 1_800_000_000.0)
    ap = run(core.complete(req("t1")))["autopilot"]
    assert (ap["tier"], ap["variant"]) == ("S", "bf16")
    assert (ap["shadow"]["tier"], ap["shadow"]["variant"]) == ("S", "int8")
    assert ap["shadow"]["propensity"] == 1.0
    assert sorted((k.tier, k.variant) for k, _ in tiers.calls) == [("S", "bf16"), ("S", "int8")]
