"""The span simulator: shadow attempts as the gateway runs them, failures correlated within
a task through its hidden difficulty."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest

from contracts.spans import FEATURE_PREFIX, SPAN_ATTEMPT, SPAN_CALL, SPAN_TASK, Attr
from policies.policy import load_policy
from serving.testing import tiny_manifest
from telemetry.synthetic import WorkloadShape, pass_probability, simulate_spans

FLEET = tiny_manifest("sim")


def _on_top(escalation: str, shadow_rate: float):
    """Every task starts on the last tier of ``escalation``; shadows at ``shadow_rate``."""
    cuts = ", ".join(str(float(i)) for i in range(escalation.count(",")))
    return load_policy(f"""
apiVersion: autopilot/v1
kind: Policy
metadata: {{version: 1, author: t, created: 2026-11-01T00:00:00Z}}
spec:
  routing: {{router: score, escalation: {escalation}, weights: {{}}, bias: 10.0,
            thresholds: [{cuts}], max_attempts: 2, shadow_rate: {shadow_rate}}}
""")


def _by_task(spans):
    tasks = defaultdict(lambda: {"task": None, "attempts": [], "calls": []})
    for s in spans:
        a = s["attributes"]
        key = {SPAN_TASK: "task", SPAN_ATTEMPT: "attempts", SPAN_CALL: "calls"}[s["name"]]
        if key == "task":
            tasks[a[Attr.TASK_ID]]["task"] = s
        else:
            tasks[a[Attr.TASK_ID]][key].append(s)
    return tasks


def test_shadow_attempts_run_beside_the_first_attempt():
    spans = list(simulate_spans(_on_top("[S, M, L]", 0.5), FLEET,
                                WorkloadShape(tasks=1000, seed=2)))
    shadowed = 0
    for task in _by_task(spans).values():
        serve = [s for s in task["attempts"] if s["attributes"][Attr.PURPOSE] == "serve"]
        shadow = [s for s in task["attempts"] if s["attributes"][Attr.PURPOSE] == "shadow"]
        assert serve[0]["attributes"][Attr.TIER] == "L"
        assert len(shadow) <= 1
        if not shadow:
            continue
        shadowed += 1
        a = shadow[0]["attributes"]
        assert a[Attr.ATTEMPT] == 1 and a[Attr.TIER] in ("S", "M")
        # the shadow's odds: a 50% rate over the two tiers below L
        assert a[Attr.PROPENSITY] == 0.25 and Attr.ADAPTER not in a
        calls = [c for c in task["calls"] if c["parent_span_id"] == shadow[0]["span_id"]]
        first = [c for c in task["calls"] if c["parent_span_id"] == serve[0]["span_id"]]
        assert len(calls) == len(first)  # call for call, as the gateway shadows
        assert all(c["attributes"][Attr.PURPOSE] == "shadow" and
                   c["attributes"][Attr.TIER] == a[Attr.TIER] for c in calls)
    assert 0.45 < shadowed / 1000 < 0.55


def test_no_shadow_and_no_hidden_difficulty_leave_the_stream_as_it_was():
    policy = _on_top("[S, M, L]", 0.0)
    plain = list(simulate_spans(policy, FLEET, WorkloadShape(tasks=200, seed=5)))
    explicit = list(simulate_spans(policy, FLEET, WorkloadShape(tasks=200, seed=5,
                                                                latent_sd=0.0)))
    assert plain == explicit
    assert not any(s["attributes"].get(Attr.PURPOSE) == "shadow" for s in plain)


@pytest.mark.parametrize("latent_sd,correlated", [(0.0, False), (2.0, True)])
def test_hidden_difficulty_correlates_failures_across_tiers(latent_sd, correlated):
    """Among tasks of one difficulty, L passes less often where S (shadow) failed only
    when the tasks carry a hidden difficulty."""
    spans = simulate_spans(_on_top("[S, L]", 1.0), FLEET,
                           WorkloadShape(tasks=4000, seed=3, latent_sd=latent_sd))
    counts = {True: [0, 0], False: [0, 0]}  # S passed -> [L passed, tasks]
    for task in _by_task(spans).values():
        if task["task"]["attributes"][FEATURE_PREFIX + "difficulty"] != 2:
            continue
        first = {s["attributes"][Attr.PURPOSE]: s["attributes"][Attr.PASSED]
                 for s in task["attempts"] if s["attributes"][Attr.ATTEMPT] == 1}
        counts[first["shadow"]][0] += first["serve"]
        counts[first["shadow"]][1] += 1
    rate = {k: v[0] / v[1] for k, v in counts.items()}
    gap = rate[True] - rate[False]
    if correlated:
        assert gap > 0.1
    else:
        assert abs(gap) < 0.08


def test_pass_probability_is_the_documented_formula():
    shape = WorkloadShape(latent_sd=1.0, retry_bonus=0.5)
    # sigmoid(skill * (rank + 1) - difficulty - 1 + retry_bonus * (attempt - 1) + adapter - latent)
    z = 1.6 * 3 - 2 - 1 + 0.5 * 1 + 1.0 - 0.7
    assert pass_probability(shape, 2, 2, 2, adapter=True, latent=0.7) == pytest.approx(
        1 / (1 + math.exp(-z)))


def _prefix(policy, cached: bool):
    return policy.model_copy(update={"spec": policy.spec.model_copy(update={
        "cache": policy.spec.cache.model_copy(update={
            "prefix": {t: cached for t in ("S", "M", "L")}})})})


def _tries(spans):
    """Per task, in attempt order: (tier, attempt, purpose, verdict, input tokens of its
    calls) of every attempt."""
    out = {}
    for task_id, task in _by_task(spans).items():
        calls = defaultdict(list)
        for c in task["calls"]:
            calls[c["parent_span_id"]].append(c["attributes"][Attr.INPUT_TOKENS])
        out[task_id] = [(a[Attr.TIER], a[Attr.ATTEMPT], a[Attr.PURPOSE], a[Attr.PASSED],
                         calls[span["span_id"]])
                        for span in task["attempts"] for a in [span["attributes"]]]
        out[task_id].sort(key=lambda t: t[1])
    return out


def _attempts_of(spans):
    """Per task: (tier, attempt, purpose) -> (verdict, input tokens of its calls)."""
    return {task: {(t, j, why): (ok, tokens) for t, j, why, ok, tokens in tries}
            for task, tries in _tries(spans).items()}


def test_coupled_windows_of_two_cache_settings_differ_only_in_what_was_cached():
    """Common random numbers: caching every tier or none leaves each task's verdicts and
    tokens as drawn, so the two windows differ by the cache alone. One stream for the whole
    window (the default) loses that: the cache rolls shift every later draw."""
    policy = _on_top("[S, M, L]", 0.3)
    shape = WorkloadShape(tasks=300, seed=11, latent_sd=1.0, coupled=True)
    on = list(simulate_spans(_prefix(policy, True), FLEET, shape))
    off = list(simulate_spans(_prefix(policy, False), FLEET, shape))
    assert _attempts_of(on) == _attempts_of(off)
    assert sum(s["attributes"].get(Attr.CACHED_INPUT_TOKENS, 0) for s in on) > 0
    assert sum(s["attributes"].get(Attr.CACHED_INPUT_TOKENS, 0) for s in off) == 0

    one_stream = WorkloadShape(tasks=300, seed=11, latent_sd=1.0)
    assert _attempts_of(simulate_spans(_prefix(policy, True), FLEET, one_stream)) != \
        _attempts_of(simulate_spans(_prefix(policy, False), FLEET, one_stream))


def _served_by_tier(spans):
    """Per task: tier -> (verdict, input tokens of its calls) of its first served try."""
    out = {}
    for task, tries in _tries(spans).items():
        out[task] = {}
        for t, _, why, ok, tokens in tries:
            if why == "serve":
                out[task].setdefault(t, (ok, tokens))
    return out


def test_coupled_windows_of_two_routes_share_each_tasks_try_on_a_tier():
    """Started on L, or on S then L, a task is the same task and its try on L the same draw:
    the same tokens, and a retry (odds raised by the retry bonus) passes wherever the first
    try on L passed."""
    shape = WorkloadShape(tasks=600, seed=4, latent_sd=1.0, coupled=True)
    on_top = _on_top("[S, L]", 0.0)
    top = _served_by_tier(simulate_spans(on_top, FLEET, shape))
    cheap_first = _served_by_tier(simulate_spans(on_top.evolve(
        author="t", routing=on_top.spec.routing.model_copy(update={"bias": -10.0})),
        FLEET, shape))
    assert top.keys() == cheap_first.keys()
    retried = [t for t in top if "L" in cheap_first[t] and "S" in cheap_first[t]]
    assert len(retried) >= 100
    for t in retried:
        (first_passed, first_tokens), (retry_passed, retry_tokens) = (
            top[t]["L"], cheap_first[t]["L"])
        assert first_tokens == retry_tokens
        assert retry_passed or not first_passed


def test_coupled_draws_are_the_same_process():
    """Coupling changes which draws pair up, not what is drawn: pass rates agree."""
    policy = _on_top("[S, M, L]", 0.0)

    def first_pass_rate(coupled: bool) -> float:
        attempts = [s["attributes"] for s in simulate_spans(
            policy, FLEET, WorkloadShape(tasks=4000, seed=8, coupled=coupled))
            if s["name"] == SPAN_ATTEMPT and s["attributes"][Attr.ATTEMPT] == 1]
        return sum(a[Attr.PASSED] for a in attempts) / len(attempts)

    assert abs(first_pass_rate(True) - first_pass_rate(False)) < 0.03
