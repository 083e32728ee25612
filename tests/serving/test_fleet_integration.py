"""The real fleet, started once for the module: Ray Serve, vLLM engines on a tiny random
two-tier fleet, the gateway, a SQLite store and the JSON-lines span exporter.

The tests run in file order against the shared fleet; the policy-reload test comes after
the tests that assume policy v1.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _policy_v1():
    from policies.policy import Policy

    return Policy.model_validate({
        "apiVersion": "autopilot/v1", "kind": "Policy",
        "metadata": {"version": 1, "author": "test", "created": "2026-01-01T00:00:00Z"},
        "spec": {
            "routing": {"router": "fixed", "escalation": ["S", "M"], "max_attempts": 3},
            "cache": {"prefix": {"S": True},
                      "response": {"enabled": True, "exclude_families": ["bracket_fix"]}},
            "guardrails": {"max_attempts_per_task": 2},
        },
    })


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from serving.engine import EngineOptions
    from serving.fleet import start_fleet
    from serving.testing import make_tiny_fleet
    from store import Store

    root = tmp_path_factory.mktemp("fleet")
    manifest = make_tiny_fleet(root / "tiny", tiers=("S", "M"))
    store_url = f"sqlite:///{root / 'autopilot.db'}"
    store = Store.open(store_url)
    store.put_policy(_policy_v1())
    store.activate(1, actor="test", reason="integration test")
    spans = root / "spans" / "gateway.jsonl"
    handle = start_fleet(manifest, store_url=store_url, spans_path=spans,
                         reload_interval_s=0.5,
                         engine_options=EngineOptions(kv_cache_bytes=32 << 20, max_num_seqs=8))
    try:
        yield {"handle": handle, "store": store, "spans": spans, "manifest": manifest,
               "root": root}
    finally:
        handle.shutdown()
        store.close()


@pytest.fixture(scope="module")
def client(fleet):
    from serving.client import GatewayClient

    return GatewayClient(fleet["handle"].url, timeout_s=180)


def _task(task_id, attempt=1, family="expr_eval", **kw):
    from serving.client import TaskContext

    return TaskContext(task_id=task_id, attempt=attempt, family=family, team="payments",
                       repo="r1", features={"difficulty": 1}, **kw)


def _spans(fleet, client):
    assert client.flush_spans()
    lines = fleet["spans"].read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_routes_by_policy_and_escalates_on_attempt_two(client):
    first = client.complete("eval: 1+2\n=", task=_task("route-1", traceparent=(
        f"00-{TRACE_ID}-{PARENT_ID}-01")))
    assert (first.tier, first.variant, first.policy_version) == ("S", "fp32", 1)
    assert first.propensity == pytest.approx(1.0)
    assert first.input_tokens == len("eval: 1+2\n=")  # char tokenizer: one token a char
    assert first.output_tokens >= 1 and first.cost_usd > 0
    second = client.complete("eval: 1+2\n=", task=_task("route-1", attempt=2))
    assert second.tier == "M"


def test_attempt_cap_is_refused_with_403_and_the_numbers(fleet, client):
    from contracts.guardrails import GuardrailRefusal

    with pytest.raises(GuardrailRefusal) as err:
        client.complete("eval: 1+2\n=", task=_task("route-1", attempt=3))
    assert err.value.code == "max_attempts_per_task"
    assert "attempt 3" in err.value.message and "2 attempts" in err.value.message
    status, body = _post(fleet, "/v1/completions", {"prompt": "x", "autopilot": {
        "task_id": "route-1", "attempt": 3}})
    assert status == 403 and body["error"]["code"] == "max_attempts_per_task"


def _post(fleet, path, body=None, method="POST"):
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fleet["handle"].url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=180) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_an_openai_client_streams_and_reads_openai_errors_through_serve(fleet):
    """Issue 15, defect 3, through Ray Serve's proxy: SSE chunks, content parts, refused
    parameters and unknown paths in OpenAI's error shape."""
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=fleet["handle"].url + "/v1", api_key="unused",
                        max_retries=0, timeout=180)
    plain = sdk.completions.create(model="auto", prompt="eval: 1+2\n=", max_tokens=8,
                                   stop=["\n"], extra_body={"autopilot": {"task_id": "sdk-0"}})
    chunks = list(sdk.completions.create(
        model="auto", prompt="eval: 1+2\n=", max_tokens=8, stop=["\n"], stream=True,
        extra_body={"autopilot": {"task_id": "sdk-1", "response_cache": "bypass"}}))
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason is not None
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    chat = list(sdk.chat.completions.create(
        model="auto", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": [{"type": "text", "text": "eval: 1+2"}]}],
        extra_body={"autopilot": {"task_id": "sdk-2"}}))
    assert chat[0].choices[0].delta.role == "assistant"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                    tools=[{"type": "function", "function": {"name": "f"}}])
    assert err.value.param == "tools"
    status, body = _post(fleet, "/v1/nope", {})
    assert status == 404 and body["error"]["code"] == "unknown_url" and "detail" not in body


def test_bad_request_names_the_field(client):
    from serving.client import GatewayRequestError

    with pytest.raises(GatewayRequestError) as err:
        client.complete("x", task=_task("bad-1", attempt=0))
    assert err.value.status == 400 and "autopilot.attempt" in str(err.value)


def test_response_cache_hits_the_second_identical_call_but_never_an_excluded_family(client):
    prompt = "list: sort [3,1,2]\n="
    a = client.complete(prompt, task=_task("cache-1", family="list_ops"))
    b = client.complete(prompt, task=_task("cache-2", family="list_ops"))
    assert a.cache in ("miss", "prefix") and b.cache == "response"
    assert b.text == a.text and b.cost_usd == 0.0
    bypass = client.complete(prompt, task=_task("cache-3", family="list_ops",
                                                response_cache="bypass"))
    assert bypass.cache != "response" and bypass.text == a.text  # deterministic decoding
    excluded = "fix: f(a, (b\n="
    c = client.complete(excluded, task=_task("cache-4", family="bracket_fix"))
    d = client.complete(excluded, task=_task("cache-5", family="bracket_fix"))
    assert c.cache != "response" and d.cache != "response" and c.text == d.text


def test_one_llm_call_span_per_call_parented_on_the_traceparent(fleet, client):
    spans = [s for s in _spans(fleet, client) if s["name"] == "llm.call"]
    by_task = {}
    for s in spans:
        by_task.setdefault(s["attributes"]["autopilot.task_id"], []).append(s)
    assert len(by_task["route-1"]) == 2  # two served attempts; the refused third made none
    parented = [s for s in by_task["route-1"] if s["attributes"]["autopilot.attempt"] == 1]
    assert parented[0]["trace_id"] == TRACE_ID and parented[0]["parent_span_id"] == PARENT_ID
    hit = by_task["cache-2"][0]["attributes"]
    assert hit["autopilot.cache"] == "response" and hit["autopilot.policy_version"] == 1
    miss = by_task["cache-1"][0]["attributes"]
    assert miss["gen_ai.usage.input_tokens"] == len("list: sort [3,1,2]\n=")
    assert miss["autopilot.tier"] == "S" and miss["autopilot.variant"] == "fp32"
    assert "autopilot.cached_input_tokens" in miss
    assert len(by_task["cache-4"]) == 1 and len(by_task["cache-5"]) == 1


def test_policy_reload_without_restart_deploys_what_the_new_policy_needs(fleet, client):
    store = fleet["store"]
    v1 = store.active_policy().policy
    spec = v1.spec
    v2 = v1.evolve(
        author="test",
        routing=spec.routing.model_copy(update={"escalation": ["M", "S"], "shadow_rate": 1.0}),
        cache=spec.cache.model_copy(update={"prefix": {"S": True, "M": True}}),
    )
    store.put_policy(v2)
    store.activate(2, actor="test", reason="reload test")
    deadline = time.monotonic() + 150  # a new tier deployment (M with prefix caching) starts
    while client.policy()["version"] != 2:
        assert time.monotonic() < deadline, "gateway did not reload policy v2"
        time.sleep(0.5)
    assert client.policy()["content_hash"] == v2.content_hash
    prompt = "trace: x=1; y=x+2; x=y*3; print(x)\n="  # longer than one 32-token KV block
    r = client.complete(prompt, task=_task("reload-1", family="var_trace"))
    assert (r.tier, r.policy_version) == ("M", 2)
    assert r.shadow is not None and r.shadow.tier == "S"  # shadow_rate 1: the other tier
    again = client.complete(prompt, task=_task("reload-2", family="var_trace",
                                               response_cache="bypass"))
    assert again.cache == "prefix" and again.cached_input_tokens >= 32
    # A task started under v1 keeps v1 for its later attempts (consistent escalation).
    old = client.complete("eval: 5\n=", task=_task("route-1", attempt=2))
    assert (old.tier, old.policy_version) == ("M", 1)
    spans = [s for s in _spans(fleet, client) if s["name"] == "llm.call"
             and s["attributes"]["autopilot.task_id"] == "reload-1"]
    assert sorted(s["attributes"]["autopilot.tier"] for s in spans) == ["M", "S"]


def test_a_tampered_weight_file_stops_its_tier_from_starting(fleet):
    from serving.tiers import DeploymentKey, TierStartFailed, deploy_tiers, running_apps

    src = Path(fleet["manifest"]).parent
    bad = fleet["root"] / "tampered"
    shutil.copytree(src, bad)
    weights = bad / "models" / "S" / "fp32" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    key = DeploymentKey("S", "fp32", False)  # not running: v1 and v2 run S with prefix caching
    with pytest.raises(TierStartFailed) as err:
        deploy_tiers(bad / "fleet.yaml", [key], fleet["handle"].engine_options)
    assert str(weights) in str(err.value) and "PinnedWeightsMismatch" in str(err.value)
    assert key.app_name not in running_apps()
