"""Budget guardrails of the gateway (pure decisions plus a small in-memory ledger).

Semantics (docs/serving.md, "Guardrails"); every check runs *before* the model call and
fails closed. The per-task rule and the team budget's comparison are ``policies.caps``
(the one statement of them, which the replay calls too); this module words the refusals
and keeps the ledger. The rule:

- ``max_attempts_per_task``: attempt ``j`` is refused when ``j`` exceeds the task's attempt
  cap, which is the policy's resolved ``max_attempts`` for the family (routing already
  takes ``min(routing max_attempts, guardrails.max_attempts_per_task)``).
- ``max_tokens_per_task``: refused once the task's measured tokens (input + output of its
  serving calls) reach the cap; otherwise the call's ``max_tokens`` is clipped to what is
  left, so one call cannot overshoot by more than its prompt.
- ``max_usd_per_task``: refused once the task's spend reaches the cap.
- ``team_budgets``: a team's spend of the current UTC day is compared with
  ``usd_per_day``; crossing each ``alert_level`` raises an alert once a day; at 100% with
  ``hard_stop`` new calls are refused.

Spend is priced from the fleet manifest with the cost model's rule
(``economics.costmodel``): uncached input at the prefill price, prefix-cached input at
``(1 - cached_input_discount)`` of it, output at the decode price, a response-cache hit at
``response_cache_usd_per_call``. Shadow calls are evaluation spend: they count toward the
team's budget but not toward the task's caps.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from contracts.guardrails import CAPS, TEAM_BUDGETS, Cap, GuardrailRefusal
from contracts.spans import CacheStatus
from policies.caps import max_tokens_left, task_refusal, team_budget_reached

__all__ = [
    "CODES",
    "BudgetLedger",
    "GuardrailRefusal",
    "TaskUsage",
    "budget_alert_level",
    "call_cost_usd",
    "check_call",
    "clip_max_tokens",
]

# The refusal codes (contracts.guardrails.CAPS); GuardrailRefusal is the contracts' one type.
CODES = CAPS


@dataclass
class TaskUsage:
    tokens: int = 0
    usd: float = 0.0
    calls: int = 0
    last_attempt: int = 0


def check_call(spec: Any, *, attempt: int, max_attempts: int, usage: TaskUsage,
               team: str | None, team_spent_usd: float) -> GuardrailRefusal | None:
    """The refusal for this call, or None when every cap allows it (``spec``: GuardrailSpec).

    The refusal is returned, not raised: the gateway raises it (``GatewayCore.complete``)."""
    cap = task_refusal(spec, attempt=attempt, spent_usd=usage.usd, spent_tokens=usage.tokens,
                       max_attempts=max_attempts)
    if cap is Cap.MAX_ATTEMPTS_PER_TASK:
        limit = spec.max_attempts_per_task
        detail = (f"guardrails.{Cap.MAX_ATTEMPTS_PER_TASK}={limit}" if limit is not None
                  and limit <= max_attempts else "the policy's routing max_attempts")
        return GuardrailRefusal(
            cap, f"attempt {attempt} exceeds the task's cap of {max_attempts} attempts ({detail})")
    if cap is Cap.MAX_TOKENS_PER_TASK:
        return GuardrailRefusal(
            cap, f"the task used {usage.tokens} tokens; its cap is {spec.max_tokens_per_task} "
                 f"(guardrails.{Cap.MAX_TOKENS_PER_TASK})")
    if cap is Cap.MAX_USD_PER_TASK:
        return GuardrailRefusal(
            cap, f"the task spent ${usage.usd:.6f}; its cap is ${spec.max_usd_per_task:.6f} "
                 f"(guardrails.{Cap.MAX_USD_PER_TASK})")
    budget = spec.team_budgets.get(team) if team is not None else None
    if team_budget_reached(budget, team_spent_usd):
        return GuardrailRefusal(
            Cap.TEAM_BUDGET_EXHAUSTED,
            f"team {team} spent ${team_spent_usd:.6f} today (UTC), "
            f"{100 * team_spent_usd / budget.usd_per_day:.1f}% of its "
            f"${budget.usd_per_day:.6f} daily budget (guardrails.{TEAM_BUDGETS}.{team})")
    return None


def clip_max_tokens(spec: Any, usage: TaskUsage, max_tokens: int) -> int:
    """``max_tokens`` clipped to the task's remaining token budget (at least 1)."""
    return max_tokens_left(spec, usage.tokens, max_tokens)


def budget_alert_level(budget: Any, spent_usd: float) -> float | None:
    """The highest alert level (share of the daily budget) that ``spent_usd`` reached."""
    share = spent_usd / budget.usd_per_day
    reached = [level for level in budget.alert_levels if share >= level]
    return max(reached) if reached else None


def call_cost_usd(fleet: Any, tier: str, variant: str | None, *, input_tokens: int,
                  cached_input_tokens: int, output_tokens: int, cache: str) -> float:
    """What one call costs under the manifest (the cost model's rule, for one call)."""
    pricing = fleet.spec.pricing
    if cache == CacheStatus.RESPONSE:
        return float(pricing.response_cache_usd_per_call)
    e = fleet.economics(tier, variant)
    cached = min(max(cached_input_tokens, 0), input_tokens)
    p_in = e.usd_per_input_token
    return ((input_tokens - cached) * p_in + cached * p_in * (1 - pricing.cached_input_discount)
            + output_tokens * e.usd_per_output_token)


@dataclass
class BudgetLedger:
    """What tasks and teams spent, as seen by this gateway (in memory, bounded per task)."""

    max_tasks: int = 200_000
    tasks: OrderedDict[str, TaskUsage] = field(default_factory=OrderedDict)
    team_day_usd: dict[tuple[str, str], float] = field(default_factory=dict)
    alerts_fired: set[tuple[str, str, float]] = field(default_factory=set)

    def task(self, task_id: str) -> TaskUsage:
        usage = self.tasks.get(task_id)
        if usage is None:
            usage = self.tasks[task_id] = TaskUsage()
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(task_id)
        return usage

    def team_spent(self, team: str | None, day: str) -> float:
        return self.team_day_usd.get((team or "", day), 0.0)

    def record(self, task_id: str, team: str | None, day: str, *, tokens: int, usd: float,
               attempt: int, counts_for_task: bool = True) -> None:
        if counts_for_task:
            usage = self.task(task_id)
            usage.tokens += tokens
            usage.usd += usd
            usage.calls += 1
            usage.last_attempt = max(usage.last_attempt, attempt)
        key = (team or "", day)
        self.team_day_usd[key] = self.team_day_usd.get(key, 0.0) + usd

    def new_alert(self, team: str, day: str, level: float | None) -> bool:
        """True once per (team, day, level): the caller logs the alert then."""
        if level is None or (team, day, level) in self.alerts_fired:
            return False
        self.alerts_fired.add((team, day, level))
        return True
