"""The guardrail caps, named once, and the one refusal every layer raises and catches.

A guardrail refusal is a ``GuardrailRefusal(code, message)``: ``code`` is one of ``CAPS``
(a task's attempt, token or spend cap, or a team's exhausted daily budget), ``message``
carries the numbers. The gateway raises it before the model call (``serving.guardrails``
decides, ``serving.gateway_core`` raises), sends it as HTTP 403 (``as_error``), the client
raises it again from the 403 (``serving.client``), and the gates and the workload driver
catch it (``gates.port``, ``gates.runner``). The cap names below are the refusal codes on
the wire and, for the per-task caps, the ``GuardrailSpec`` field names as well.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from contracts.errors import PermanentError

__all__ = ["CAPS", "TASK_CAPS", "TEAM_BUDGETS", "Cap", "GuardrailRefusal"]

# The GuardrailSpec field that holds the per-team daily budgets.
TEAM_BUDGETS = "team_budgets"


class Cap(StrEnum):
    """A guardrail cap, by the code a refusal under it carries."""

    MAX_ATTEMPTS_PER_TASK = "max_attempts_per_task"
    MAX_TOKENS_PER_TASK = "max_tokens_per_task"
    MAX_USD_PER_TASK = "max_usd_per_task"
    TEAM_BUDGET_EXHAUSTED = "team_budget_exhausted"

    @property
    def field(self) -> str:
        """The ``policies.policy.GuardrailSpec`` field that sets this cap."""
        return TEAM_BUDGETS if self is Cap.TEAM_BUDGET_EXHAUSTED else self.value


# Every refusal code, in the order the gateway checks them.
CAPS: tuple[Cap, ...] = tuple(Cap)
# The caps one task can run into (each is also a GuardrailSpec field of that name).
TASK_CAPS: tuple[Cap, ...] = (Cap.MAX_ATTEMPTS_PER_TASK, Cap.MAX_TOKENS_PER_TASK,
                              Cap.MAX_USD_PER_TASK)


class GuardrailRefusal(PermanentError):
    """A call refused under a guardrail cap (``code`` names the cap, ``message`` says why).

    ``code`` is kept as the plain string it arrived as: a code from a newer gateway that is
    not in ``CAPS`` still travels (and ``str(refusal)`` is ``"<code>: <message>"``).
    """

    def __init__(self, code: str, message: str):
        self.code = str(code)
        self.message = message
        super().__init__(f"{self.code}: {message}")

    def __reduce__(self):  # pickles (Ray, multiprocessing) as (code, message)
        return (type(self), (self.code, self.message))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GuardrailRefusal):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"GuardrailRefusal(code={self.code!r}, message={self.message!r})"

    def as_error(self) -> dict[str, Any]:
        """The gateway's HTTP 403 body, in OpenAI's error shape (``code`` names the cap).
        403, not 429: a refusal is final, and OpenAI's SDKs retry a 429."""
        return {"error": {"message": self.message, "type": "guardrail", "param": None,
                          "code": self.code}}
