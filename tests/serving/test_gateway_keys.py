"""API keys at the gateway (issue 15, defect 4): identity from the key, never from what
the client says. The gateway's own request handler (``serving.openai_http``) on a plain
FastAPI app over a ``GatewayCore`` with a fake tier and a real store (no Ray, no vLLM).

Before: any bearer token was accepted and the team a client named (``autopilot.team``
through ``extra_body``, and so on) was what budgets and spans were attributed to. Now a
gateway that requires keys refuses a call without a valid, unrevoked key (401 in OpenAI's
shape), and a call with a key is attributed to the key's team and repo whatever the body,
``user`` or headers say; a repo outside the key, or gate traffic on a serve key, is 403.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from contracts.manifest import load_fleet
from policies.policy import Policy
from serving.apikeys import KeyRing
from serving.fleet import FleetStartError, check_listen, is_loopback, start_fleet
from serving.gateway_core import GatewayCore, PolicyBook
from serving.openai_http import complete_response, install_error_handlers
from store import Store

FLEET = load_fleet("controlplane/starter/fleet.yaml")
CHAT = {"messages": [{"role": "user", "content": "eval: 1+2"}], "max_tokens": 4}


def _policy(guardrails=None):
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "t", "created": "2026-01-01T00:00:00Z"},
        "spec": {"routing": {"router": "fixed", "escalation": ["S", "M"], "max_attempts": 3},
                 "guardrails": guardrails or {}}})


class FakeTiers:
    async def __call__(self, key, request):
        return {"text": "3", "input_tokens": len(request["prompt"]), "output_tokens": 2,
                "cached_input_tokens": 0, "finish_reason": "stop"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Gateway:
    """The ingress's completion routes with a key ring over a real store; ``seen`` keeps
    every request as the core received it (what its spans, budgets and tasks read)."""

    def __init__(self, store: Store, *, require: bool, guardrails=None):
        p = _policy(guardrails)
        self.core = GatewayCore(FLEET, PolicyBook(p, {1: p}.__getitem__), FakeTiers())
        self.clock = Clock()
        self.keys = KeyRing(store.find_api_key, require=require, ttl_s=2.0, clock=self.clock)
        self.seen = []
        app = install_error_handlers(FastAPI())

        async def complete(req):
            self.seen.append(req)
            return await self.core.complete(req)

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await complete_response(request, "chat", complete, self.keys)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await complete_response(request, "completion", complete, self.keys)

        self.http = TestClient(app, raise_server_exceptions=False)

    def chat(self, key=None, body=None, headers=None, **autopilot):
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        payload = {**CHAT, **(body or {})}
        if autopilot:
            payload["autopilot"] = {"task_id": "t1", **autopilot}
        return self.http.post("/v1/chat/completions", json=payload, headers=hdrs)

    def spent(self, team):
        return self.core.ledger.team_spent(team, self.core._day())


@pytest.fixture()
def store(tmp_path):
    with Store.for_state_dir(tmp_path) as s:
        yield s


def _openai_error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code, error
    return error


# ------------------------------------------------------------------------- 401: no key
def test_without_a_valid_key_a_keyed_gateway_answers_401_in_openai_shape(store):
    gw = Gateway(store, require=True)
    _, secret = store.create_api_key(team="payments", actor="ops")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    for key in (None, "unused", "sk-anything", wrong, "ap-k000000000000." + "A" * 43):
        error = _openai_error(gw.chat(key), 401, "invalid_api_key")
        assert error["type"] == "invalid_request_error"
    # the completions route too, and a body that is not even JSON: the key comes first
    assert gw.http.post("/v1/completions", content=b"{nope").status_code == 401
    assert gw.seen == []
    assert gw.chat(secret).status_code == 200


def test_a_revoked_key_is_refused_within_the_cache_ttl(store):
    gw = Gateway(store, require=True)
    record, secret = store.create_api_key(team="payments", actor="ops")
    assert gw.chat(secret).status_code == 200
    store.revoke_api_key(record.key_id, actor="ops", reason="leaked")
    gw.clock.now += gw.keys.ttl_s  # the cached read has expired: the store is read again
    _openai_error(gw.chat(secret), 401, "invalid_api_key")


# ------------------------------------------------------- attribution from the key only
def test_attribution_comes_from_the_key_not_from_what_the_client_says(store):
    gw = Gateway(store, require=True)
    _, secret = store.create_api_key(team="payments", actor="ops")
    response = gw.chat(secret, body={"user": "search"},
                       headers={"X-Autopilot-Team": "search", "X-Team": "search",
                                "OpenAI-Organization": "search"},
                       team="search", family="expr_eval")  # autopilot.team via extra_body
    assert response.status_code == 200, response.text
    [req] = gw.seen
    assert req.ctx.team == "payments"
    assert gw.spent("payments") > 0 and gw.spent("search") == 0


def test_the_keys_team_budget_holds_whatever_team_the_client_names(store):
    # payments may spend almost nothing; search is budgeted generously
    gw = Gateway(store, require=True, guardrails={"team_budgets": {
        "payments": {"usd_per_day": 1e-9}, "search": {"usd_per_day": 1000.0}}})
    _, secret = store.create_api_key(team="payments", actor="ops")
    assert gw.chat(secret, team="payments", task_id="a").status_code == 200
    refused = gw.chat(secret, team="search", task_id="b")  # claims the other team
    error = _openai_error(refused, 403, "team_budget_exhausted")
    assert error["type"] == "guardrail"
    assert gw.spent("search") == 0


def test_without_a_team_field_a_keyed_call_is_not_unattributed(store):
    gw = Gateway(store, require=True)
    _, secret = store.create_api_key(team="payments", actor="ops")
    assert gw.chat(secret).status_code == 200  # plain OpenAI traffic: no autopilot object
    assert [r.ctx.team for r in gw.seen] == ["payments"]
    assert gw.spent("unattributed") == 0


# ---------------------------------------------------------------------- repos, purpose
def test_a_repo_outside_the_key_is_403(store):
    gw = Gateway(store, require=True)
    _, secret = store.create_api_key(team="payments", repos=["svc-a", "svc-b"], actor="ops")
    error = _openai_error(gw.chat(secret, repo="svc-z"), 403, "repo_not_allowed")
    assert error["param"] == "autopilot.repo"
    assert gw.chat(secret, repo="svc-b", task_id="t2").status_code == 200
    assert [r.ctx.repo for r in gw.seen] == ["svc-b"]


def test_a_key_bound_to_one_repo_gives_it_to_calls_that_name_none(store):
    gw = Gateway(store, require=True)
    _, secret = store.create_api_key(team="payments", repos=["svc-a"], actor="ops")
    assert gw.chat(secret).status_code == 200
    assert gw.seen[0].ctx.repo == "svc-a"


def test_gate_traffic_needs_a_gate_key(store):
    gw = Gateway(store, require=True)
    _, serve_key = store.create_api_key(team="platform", actor="ops")
    _, gate_key = store.create_api_key(team="platform", purpose="gate", actor="ops")
    error = _openai_error(gw.chat(serve_key, purpose="gate", policy_version=1), 403,
                          "purpose_not_allowed")
    assert error["param"] == "autopilot.purpose"
    ok = gw.chat(gate_key, purpose="gate", policy_version=1, task_id="g1")
    assert ok.status_code == 200, ok.text
    assert gw.seen[-1].ctx.purpose == "gate"


# ------------------------------------------------------------ keys optional (loopback)
def test_on_loopback_keys_are_optional_but_a_presented_key_still_rules(store):
    gw = Gateway(store, require=False)
    _, secret = store.create_api_key(team="payments", actor="ops")
    assert gw.chat(None, team="search", task_id="a").status_code == 200  # today's behaviour
    assert gw.chat("unused", team="search", task_id="b").status_code == 200  # SDK dummy key
    assert gw.chat(secret, team="search", task_id="c").status_code == 200
    assert [r.ctx.team for r in gw.seen] == ["search", "search", "payments"]
    _openai_error(gw.chat(secret[:-1] + "!", task_id="d"), 401, "invalid_api_key")


def test_key_reads_are_cached(store):
    reads = []

    def lookup(key_id):
        reads.append(key_id)
        return store.find_api_key(key_id)

    ring = KeyRing(lookup, require=True, ttl_s=2.0, clock=Clock())
    _, secret = store.create_api_key(team="payments", actor="ops")
    headers = {"authorization": f"Bearer {secret}"}
    for _ in range(5):
        assert ring.identify(headers).team == "payments"
    assert len(reads) == 1
    assert list(ring.take_used()) == [reads[0]] and ring.take_used() == {}


# --------------------------------------------------------------- listening beyond loopback
def test_serving_beyond_loopback_without_keys_is_refused(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal"):
        assert not is_loopback(host)
        with pytest.raises(FleetStartError, match="beyond loopback"):
            check_listen(host, require_keys=False)
        check_listen(host, require_keys=True)
    check_listen("127.0.0.1", require_keys=False)
    # start_fleet refuses before it reads the manifest or starts Ray
    with pytest.raises(FleetStartError, match="beyond loopback"):
        start_fleet(tmp_path / "no-fleet.yaml", store_url="sqlite://", host="0.0.0.0")
