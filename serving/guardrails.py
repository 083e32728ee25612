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
  ``hard_stop`` new calls are refused. Serve traffic without a team is held against
  ``UNATTRIBUTED_TEAM``'s budget; where the policy budgets teams with a hard stop and sets
  none for it, such a request is refused.

Reservations (issue 14, defect 4): the spend the caps compare is what was recorded *plus*
the worst case of every call still in flight. Before a call the gateway reserves its worst
case (``worst_case_cost``: the prompt's tokens bounded from above, priced uncached, plus
``max_tokens`` of output) against the task and the team in the same synchronous step as
the check (``BudgetLedger.reserve``, no ``await`` between them), and after the call
settles it: the reservation is released and the actual cost recorded (``settle``; a
failed call only releases). So a call is admitted only while recorded + reserved spend is
below the cap, and concurrent calls overspend a cap by at most one call's reservation
(sequential calls see no reservations: the rule is exactly ``policies.caps``, which the
replay applies too). The budget day is the gateway's own clock (UTC), never a client's.

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
    "PROMPT_TOKEN_MARGIN",
    "UNATTRIBUTED_TEAM",
    "BudgetLedger",
    "GuardrailRefusal",
    "Reservation",
    "TaskUsage",
    "attributed_team",
    "budget_alert_level",
    "call_cost_usd",
    "check_call",
    "clip_max_tokens",
    "prompt_tokens_bound",
    "worst_case_cost",
]

# The refusal codes (contracts.guardrails.CAPS); GuardrailRefusal is the contracts' one type.
CODES = CAPS

# The team a serve request without one is attributed to; its budget is
# ``guardrails.team_budgets.unattributed`` (issue 14, defect 4: leaving the team out must
# not escape the team budgets).
UNATTRIBUTED_TEAM = "unattributed"


def attributed_team(team: str | None, *, serve: bool) -> str | None:
    """The team a request's spend is held against: serve traffic without a team goes to
    ``UNATTRIBUTED_TEAM``; gate traffic keeps what it names (None: no team budget)."""
    if team is None and serve:
        return UNATTRIBUTED_TEAM
    return team


@dataclass
class TaskUsage:
    """A task's recorded spend, and the worst case reserved by its calls in flight."""

    tokens: int = 0
    usd: float = 0.0
    calls: int = 0
    last_attempt: int = 0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    in_flight: int = 0

    @property
    def exposure_tokens(self) -> int:
        """Recorded tokens plus those reserved by calls in flight (what the caps compare)."""
        return self.tokens + self.reserved_tokens

    @property
    def exposure_usd(self) -> float:
        """Recorded spend plus that reserved by calls in flight (what the caps compare)."""
        return self.usd + self.reserved_usd


@dataclass
class Reservation:
    """One call's worst case, held against its task (unless shadow) and team until it
    settles (``BudgetLedger.settle`` or ``release``; either is done once)."""

    task_id: str
    usage: TaskUsage | None  # None: the call does not count toward the task (shadow)
    team: str | None
    day: str
    tokens: int
    usd: float
    open: bool = True


def check_call(spec: Any, *, attempt: int, max_attempts: int, usage: TaskUsage,
               team: str | None, team_spent_usd: float) -> GuardrailRefusal | None:
    """The refusal for this call, or None when every cap allows it (``spec``: GuardrailSpec).

    The task's spend compared is its exposure (recorded plus reserved by calls in flight);
    ``team_spent_usd`` is the team's, likewise. The refusal is returned, not raised: the
    gateway raises it (``GatewayCore.complete``)."""
    cap = task_refusal(spec, attempt=attempt, spent_usd=usage.exposure_usd,
                       spent_tokens=usage.exposure_tokens, max_attempts=max_attempts)
    if cap is Cap.MAX_ATTEMPTS_PER_TASK:
        limit = spec.max_attempts_per_task
        detail = (f"guardrails.{Cap.MAX_ATTEMPTS_PER_TASK}={limit}" if limit is not None
                  and limit <= max_attempts else "the policy's routing max_attempts")
        return GuardrailRefusal(
            cap, f"attempt {attempt} exceeds the task's cap of {max_attempts} attempts ({detail})")
    if cap is Cap.MAX_TOKENS_PER_TASK:
        return GuardrailRefusal(
            cap, f"the task used {usage.tokens} tokens{_held(usage.reserved_tokens, 'tokens')}; "
                 f"its cap is {spec.max_tokens_per_task} (guardrails.{Cap.MAX_TOKENS_PER_TASK})")
    if cap is Cap.MAX_USD_PER_TASK:
        return GuardrailRefusal(
            cap, f"the task spent ${usage.usd:.6f}{_held(usage.reserved_usd, 'usd')}; its cap "
                 f"is ${spec.max_usd_per_task:.6f} (guardrails.{Cap.MAX_USD_PER_TASK})")
    budget = spec.team_budgets.get(team) if team is not None else None
    if (team == UNATTRIBUTED_TEAM and budget is None
            and any(b.hard_stop for b in spec.team_budgets.values())):
        return GuardrailRefusal(
            Cap.TEAM_BUDGET_EXHAUSTED,
            f"a request without a team is refused while the policy budgets teams with a hard "
            f"stop and sets no budget for {UNATTRIBUTED_TEAM!r} "
            f"(guardrails.{TEAM_BUDGETS}.{UNATTRIBUTED_TEAM})")
    if team_budget_reached(budget, team_spent_usd):
        return GuardrailRefusal(
            Cap.TEAM_BUDGET_EXHAUSTED,
            f"team {team} spent (or holds for calls in flight) ${team_spent_usd:.6f} today (UTC), "
            f"{100 * team_spent_usd / budget.usd_per_day:.1f}% of its "
            f"${budget.usd_per_day:.6f} daily budget (guardrails.{TEAM_BUDGETS}.{team})")
    return None


def _held(amount: float, unit: str) -> str:
    if not amount:
        return ""
    return (f" and holds {amount} more for calls in flight" if unit == "tokens"
            else f" and holds ${amount:.6f} more for calls in flight")


def clip_max_tokens(spec: Any, usage: TaskUsage, max_tokens: int) -> int:
    """``max_tokens`` clipped to the task's remaining token budget (at least 1), counting
    the tokens its calls in flight hold."""
    return max_tokens_left(spec, usage.exposure_tokens, max_tokens)


# Tokens a prompt may take beyond one per UTF-8 byte (a BOS/EOS or a template's few).
PROMPT_TOKEN_MARGIN = 8


def prompt_tokens_bound(prompt: str) -> int:
    """An upper bound of a prompt's tokens without its tokenizer: one per UTF-8 byte (a
    byte-level or character tokenizer never makes more) plus ``PROMPT_TOKEN_MARGIN``."""
    return len(prompt.encode("utf-8", "surrogatepass")) + PROMPT_TOKEN_MARGIN


def worst_case_cost(fleet: Any, tier: str, variant: str | None, *, prompt: str,
                    max_tokens: int) -> tuple[int, float]:
    """``(tokens, usd)`` one call may spend at most: the prompt's token bound, uncached, at
    the prefill price and ``max_tokens`` at the decode price (a response-cache hit, if it
    costs more, bounds it instead)."""
    tokens = prompt_tokens_bound(prompt) + max(int(max_tokens), 0)
    usd = call_cost_usd(fleet, tier, variant, input_tokens=prompt_tokens_bound(prompt),
                        cached_input_tokens=0, output_tokens=max(int(max_tokens), 0),
                        cache=CacheStatus.MISS)
    return tokens, max(usd, float(fleet.spec.pricing.response_cache_usd_per_call))


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
    # What calls in flight hold, per (team, day): released or settled when each ends.
    team_day_reserved: dict[tuple[str, str], float] = field(default_factory=dict)

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
        """What the team's calls of ``day`` cost, as recorded (calls in flight excluded)."""
        return self.team_day_usd.get((team or "", day), 0.0)

    def team_exposure(self, team: str | None, day: str) -> float:
        """The team's recorded spend of ``day`` plus what its calls in flight hold."""
        key = (team or "", day)
        return self.team_day_usd.get(key, 0.0) + self.team_day_reserved.get(key, 0.0)

    def reserve(self, task_id: str, team: str | None, day: str, *, tokens: int, usd: float,
                counts_for_task: bool = True) -> Reservation:
        """Hold a call's worst case against its task and team (synchronous: the caller
        checks the caps and reserves with no ``await`` between, so no other call of the
        event loop sees the exposure without this call's share)."""
        usage = self.task(task_id) if counts_for_task else None
        if usage is not None:
            usage.reserved_tokens += tokens
            usage.reserved_usd += usd
            usage.in_flight += 1
        key = (team or "", day)
        self.team_day_reserved[key] = self.team_day_reserved.get(key, 0.0) + usd
        return Reservation(task_id, usage, team, day, tokens, usd)

    def release(self, r: Reservation) -> None:
        """Give a reservation back (the call failed or was cancelled); idempotent."""
        if not r.open:
            return
        r.open = False
        if r.usage is not None:
            r.usage.reserved_tokens = max(0, r.usage.reserved_tokens - r.tokens)
            r.usage.reserved_usd = max(0.0, r.usage.reserved_usd - r.usd)
            r.usage.in_flight = max(0, r.usage.in_flight - 1)
        key = (r.team or "", r.day)
        left = self.team_day_reserved.get(key, 0.0) - r.usd
        if left <= 1e-15:
            self.team_day_reserved.pop(key, None)
        else:
            self.team_day_reserved[key] = left

    def settle(self, r: Reservation, *, tokens: int, usd: float, attempt: int) -> None:
        """Release the reservation and record what the call actually spent, on the same
        task, team and day it reserved against."""
        if not r.open:
            return
        self.release(r)
        self.record(r.task_id, r.team, r.day, tokens=tokens, usd=usd, attempt=attempt,
                    counts_for_task=r.usage is not None)

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
