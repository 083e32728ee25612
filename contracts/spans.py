"""The telemetry contract: every span name, attribute key and enumerated value.

This is the one place these strings are written. The gateway, the workload driver, the
ingester and the cost model import them from here, so a rename is one edit.
Follows the OpenTelemetry GenAI semantic conventions where they apply (``gen_ai.*``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "FEATURE_PREFIX",
    "SERVICE_NAME",
    "SPAN_ATTEMPT",
    "SPAN_CALL",
    "SPAN_NAMES",
    "SPAN_TASK",
    "Attr",
    "CacheStatus",
    "Outcome",
    "Purpose",
]

SERVICE_NAME = "fleet-autopilot"

SPAN_TASK = "agent.task"
SPAN_ATTEMPT = "agent.attempt"
SPAN_CALL = "llm.call"
SPAN_NAMES = (SPAN_TASK, SPAN_ATTEMPT, SPAN_CALL)

FEATURE_PREFIX = "autopilot.feature."


class Attr:
    """Attribute keys of the three spans (see DESIGN.md, "Telemetry")."""

    # shared
    TASK_ID = "autopilot.task_id"
    POLICY_VERSION = "autopilot.policy_version"
    TIER = "autopilot.tier"
    VARIANT = "autopilot.variant"
    ADAPTER = "autopilot.adapter"
    ATTEMPT = "autopilot.attempt"
    COST_USD = "autopilot.cost_usd"

    # agent.task
    FAMILY = "autopilot.family"
    TEAM = "autopilot.team"
    REPO = "autopilot.repo"
    AGENT = "autopilot.agent"
    OUTCOME = "autopilot.outcome"
    VERIFIER_PASSED = "autopilot.verifier_passed"
    REVIEW_ACCEPTED = "autopilot.review_accepted"
    VERIFIER_COST_USD = "autopilot.verifier_cost_usd"

    # agent.attempt
    PASSED = "autopilot.passed"
    PURPOSE = "autopilot.purpose"
    PROPENSITY = "autopilot.propensity"

    # llm.call
    REQUEST_MODEL = "gen_ai.request.model"
    INPUT_TOKENS = "gen_ai.usage.input_tokens"
    OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    CACHE = "autopilot.cache"
    CACHED_INPUT_TOKENS = "autopilot.cached_input_tokens"


class Outcome(StrEnum):
    """How a task ended. Only GREEN counts as a Green PR (with review accepted, if recorded)."""

    GREEN = "green"
    FAILED = "failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    HUMAN_TRIAGE = "human_triage"


class Purpose(StrEnum):
    """Why an attempt ran: serving the task, shadow evaluation, or a gate run."""

    SERVE = "serve"
    SHADOW = "shadow"
    GATE = "gate"


class CacheStatus(StrEnum):
    """How a call was served: no cache, a reused KV prefix, or a whole cached response."""

    MISS = "miss"
    PREFIX = "prefix"
    RESPONSE = "response"
