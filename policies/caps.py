"""When a guardrail cap refuses a task's next attempt: the one statement of the rule.

As ``policies.routing`` is the one executable statement of routing, this module is the one
statement of the per-task caps (``spec.guardrails``). The gateway calls it before every
model call (``serving.guardrails.check_call``), the replay for every task and plan step at
once (``experiments.replay``), and any outside tool may call it, so the three refuse the
same attempts by construction.

The rule (``docs/policy.md``, "Guardrails"), for a task that has spent ``spent_usd`` and
``spent_tokens`` on its serving calls so far and asks for attempt ``attempt``:

- ``max_attempts_per_task``: refused when ``attempt > max_attempts`` (the gateway passes
  the routing's resolved ``max_attempts``, which already takes the guardrail into
  account; without it, the guardrail itself).
- ``max_tokens_per_task``: refused once ``spent_tokens >= cap``.
- ``max_usd_per_task``: refused once ``spent_usd >= cap``.

A cap refuses once the spend *has reached* it, never because the next attempt *would*
pass it: the attempt that crosses a cap runs (the gateway clips its ``max_tokens`` to the
tokens left, ``max_tokens_left``) and the next one is refused. Caps are checked in the
order above; the first that refuses names the refusal (``contracts.guardrails.Cap``).
The gateway compares a task's (and a team's) recorded spend *plus* the worst case its calls
in flight have reserved (``serving.guardrails.BudgetLedger``), so concurrent calls pass a
cap by less than one reservation; with no call in flight that is exactly this rule, which
is what the replay walks (on drawn spends: the window knows a task's mean attempt only). Shadow calls are evaluation spend: they never count toward a
task's caps. A team's daily budget refuses once the team's spend of the day has reached it
with ``hard_stop`` (``team_budget_reached``); it is not a per-task cap.

``cap_reached``, ``task_caps_reached`` and ``team_budget_reached`` take scalars or numpy
arrays (elementwise, broadcasting) for the spend and attempt arguments and answer in kind:
plain comparisons, no numpy import, so ``policies`` stays light.
"""

from __future__ import annotations

from typing import Any

from contracts.guardrails import TASK_CAPS, Cap

__all__ = [
    "CAP_TOLERANCE",
    "TASK_CAPS",
    "cap_reached",
    "max_tokens_left",
    "task_caps_reached",
    "task_refusal",
    "team_budget_reached",
]


# Spend is summed in floating point, in whatever order calls settle (and again when a
# restarted ledger adds up what the store kept): a spend within this share of the cap has
# reached it, so the verdict never hangs on the order of a sum.
CAP_TOLERANCE = 1e-9


def cap_reached(limit: float | None, spent: Any) -> Any:
    """True where ``spent`` has reached ``limit`` (``spent >= limit``, up to
    ``CAP_TOLERANCE`` of it); no cap: False."""
    if limit is None:
        return False
    return spent >= limit * (1.0 - CAP_TOLERANCE)


def task_caps_reached(spec: Any, *, attempt: Any, spent_usd: Any, spent_tokens: Any,
                      max_attempts: int | None = None) -> list[tuple[Cap, Any]]:
    """``[(cap, refuses)]`` for every per-task cap, in the order the gateway checks them.

    ``spec`` is a ``GuardrailSpec``; ``refuses`` is a bool, or a bool array where an
    argument is an array. ``max_attempts`` defaults to ``spec.max_attempts_per_task``.
    """
    if max_attempts is None:
        max_attempts = spec.max_attempts_per_task
    return [
        (Cap.MAX_ATTEMPTS_PER_TASK,
         False if max_attempts is None else attempt > max_attempts),
        (Cap.MAX_TOKENS_PER_TASK, cap_reached(spec.max_tokens_per_task, spent_tokens)),
        (Cap.MAX_USD_PER_TASK, cap_reached(spec.max_usd_per_task, spent_usd)),
    ]


def task_refusal(spec: Any, *, attempt: int, spent_usd: float, spent_tokens: float,
                 max_attempts: int | None = None) -> Cap | None:
    """The cap that refuses attempt ``attempt`` of one task, or None (scalars only)."""
    for cap, refuses in task_caps_reached(spec, attempt=attempt, spent_usd=spent_usd,
                                          spent_tokens=spent_tokens,
                                          max_attempts=max_attempts):
        if refuses:
            return cap
    return None


def max_tokens_left(spec: Any, spent_tokens: int, max_tokens: int) -> int:
    """A call's ``max_tokens`` clipped to the task's remaining token budget (at least 1).

    Scalars only: the gateway clips each call; the replay draws whether an attempt's last
    call is clipped (``experiments.replay._cap_odds``)."""
    if spec.max_tokens_per_task is None:
        return max_tokens
    return max(1, min(max_tokens, spec.max_tokens_per_task - spent_tokens))


def team_budget_reached(budget: Any, spent_usd: Any) -> Any:
    """True where a team's spend of the day has reached a hard-stop budget (``TeamBudget``);
    a soft budget (``hard_stop: false``) never refuses, it only alerts."""
    if budget is None or not budget.hard_stop:
        return False
    return cap_reached(budget.usd_per_day, spent_usd)

