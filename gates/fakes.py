"""An in-process serving path for unit tests of the runner (no Ray, no vLLM).

It applies the policy the way the gateway does where the gates look: the tier of each
attempt from ``policies.routing.tier_plan``, ``max_attempts_per_task`` and
``max_tokens_per_task`` refusals per task, and an exact-match response cache when the
policy enables it. Answers come from a function of (case, tier, variant, attempt), so a
test states exactly how good each tier is. Knobs make it misbehave on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from contracts.guardrails import Cap
from gates.port import CaseOutput, GuardrailRefusal, ResponseCache
from gates.suite import SuiteCase
from policies.policy import Policy

__all__ = ["FakeCall", "FakeServingPath"]

Answer = Callable[[SuiteCase, str, str | None, int], str]


@dataclass
class FakeCall:
    case_id: str
    task_id: str
    policy_version: int
    attempt: int
    response_cache: str
    outcome: str


@dataclass
class FakeServingPath:
    policies: Mapping[int, Policy]
    answer: Answer
    latency_ms: Callable[[SuiteCase, str], float] = lambda case, tier: 10.0
    flaky_cases: frozenset[str] = frozenset()  # outputs change on every call
    corrupt_cache: bool = False  # cache serves a wrong text
    ignore_attempt_cap: bool = False
    fail_cases: frozenset[str] = frozenset()  # raise a connection error
    calls: list[FakeCall] = field(default_factory=list)
    _cache: dict[tuple[int, str], str] = field(default_factory=dict)
    _spent: dict[str, int] = field(default_factory=dict)
    _counter: int = 0

    def complete(self, case: SuiteCase, *, policy_version: int, attempt: int = 1,
                 response_cache: ResponseCache = "use", task_id: str | None = None
                 ) -> CaseOutput:
        from policies.routing import tier_plan

        task_id = task_id or f"gate-{case.id}"
        policy = self.policies[policy_version]
        guard = policy.spec.guardrails

        def record(outcome: str) -> None:
            self.calls.append(FakeCall(case.id, task_id, policy_version, attempt,
                                       response_cache, outcome))

        if case.id in self.fail_cases:
            record("error")
            raise ConnectionError(f"connection refused for {case.id}")
        from policies.routing import resolve_routing

        cap = resolve_routing(policy, case.family).max_attempts  # as the gateway applies it
        if attempt > cap and not self.ignore_attempt_cap:
            record("refused")
            raise GuardrailRefusal(Cap.MAX_ATTEMPTS_PER_TASK,
                                   f"attempt {attempt} > max_attempts_per_task {cap}")
        if guard.max_tokens_per_task is not None and \
                self._spent.get(task_id, 0) >= guard.max_tokens_per_task:
            record("refused")
            raise GuardrailRefusal(Cap.MAX_TOKENS_PER_TASK, f"task spent "
                                   f"{self._spent[task_id]} >= {guard.max_tokens_per_task}")
        plan = tier_plan(policy, case.family, case.features)
        step = plan[min(attempt, len(plan)) - 1]
        response = policy.spec.cache.response
        cacheable = (response.enabled and response_cache == "use"
                     and case.family not in response.exclude_families)
        key = (policy_version, case.prompt)
        if cacheable and key in self._cache:
            text = self._cache[key]
            if self.corrupt_cache:
                text = text + "?"
            record("response")
            return CaseOutput(text, step.tier, step.variant, step.adapter, 0, 0, 1.0,
                              "response", 0.0, policy_version, policy.content_hash)
        text = self.answer(case, step.tier, step.variant, attempt)
        if case.id in self.flaky_cases:
            self._counter += 1
            text = f"{text}{self._counter}"
        if cacheable:
            self._cache[key] = text
        tokens_in, tokens_out = len(case.prompt), len(text) + 1
        self._spent[task_id] = self._spent.get(task_id, 0) + tokens_in + tokens_out
        record("miss")
        return CaseOutput(text, step.tier, step.variant, step.adapter, tokens_in, tokens_out,
                          self.latency_ms(case, step.tier), "miss", 1e-6 * tokens_out,
                          policy_version, policy.content_hash)
