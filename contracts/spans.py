"""The telemetry contract: every span name, attribute key and enumerated value.

This is the one place these strings are written. The gateway, the workload driver, the
ingester and the cost model import them from here, so a rename is one edit.
Follows the OpenTelemetry GenAI semantic conventions where they apply (``gen_ai.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

__all__ = [
    "FEATURE_PREFIX",
    "GENAI_AGENT_OPERATIONS",
    "GENAI_CALL_OPERATIONS",
    "GENAI_PROVIDER",
    "SERVICE_NAME",
    "SPAN_ATTEMPT",
    "SPAN_CALL",
    "SPAN_NAMES",
    "SPAN_TASK",
    "Attr",
    "CacheStatus",
    "GenAI",
    "Outcome",
    "Purpose",
    "SpanLimits",
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


class GenAI:
    """OpenTelemetry GenAI semantic-convention keys the product reads beside its own
    (``docs/telemetry.md``, "GenAI semantic conventions"). The three it shares with its own
    contract are ``Attr.REQUEST_MODEL``, ``Attr.INPUT_TOKENS`` and ``Attr.OUTPUT_TOKENS``.
    Each ``*_OLD`` key is a name earlier conventions (or OpenLLMetry) used for the same
    value; it is read only when the current key is absent."""

    OPERATION_NAME = "gen_ai.operation.name"
    PROVIDER_NAME = "gen_ai.provider.name"
    RESPONSE_MODEL = "gen_ai.response.model"
    CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    CACHE_READ_INPUT_TOKENS_OLD = "gen_ai.usage.cache_read_input_tokens"
    INPUT_TOKENS_OLD = "gen_ai.usage.prompt_tokens"
    OUTPUT_TOKENS_OLD = "gen_ai.usage.completion_tokens"
    CONVERSATION_ID = "gen_ai.conversation.id"
    AGENT_ID = "gen_ai.agent.id"
    AGENT_NAME = "gen_ai.agent.name"


# gen_ai.operation.name values: a model call that generates tokens is an ``llm.call``; an
# agent invocation is an ``agent.attempt``. Other operations (embeddings, execute_tool,
# create_agent, ...) are counted as ignored.
GENAI_CALL_OPERATIONS = ("chat", "text_completion", "generate_content")
GENAI_AGENT_OPERATIONS = ("invoke_agent",)
GENAI_PROVIDER = SERVICE_NAME
"""``gen_ai.provider.name`` of the gateway's calls: the self-hosted fleet is the provider."""


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


# ------------------------------------------------------------------------------ limits
# The deepest nesting a limit may allow: a quarantine record holds the span one level
# down, and the JSON writer refuses documents nested deeper than 254.
MAX_DEPTH_CEILING = 200


@dataclass(frozen=True)
class SpanLimits:
    """What one span may carry and claim. Ingest quarantines a span beyond any of these
    (``docs/telemetry.md``, "Limits"); pass another instance to ``ingest_paths`` to change
    them. The shape limits are checked on the raw line before any parser builds columns
    from it, so no single line can exhaust the reader; the value limits reject numbers no
    producer of this contract can mean (a cost of 1e308, 1e15 tokens, a start in 2200).
    """

    # shape of the input
    max_line_bytes: int = 1 << 20
    """A flat JSON line (one span), or one OTLP span as re-serialised."""
    max_request_bytes: int = 256 << 20
    """One OTLP/JSON export request: a line of the file exporter, or a whole document."""
    max_depth: int = 32
    """JSON nesting of a span: the span object is 1, its attributes object 2 (OTLP: the
    attributes list 2, an attribute 3, its value 4)."""
    max_attributes: int = 128
    """Attributes of one span."""
    max_string_chars: int = 64 << 10
    """Any key or string value in a span."""
    # plausibility of values
    max_cost_usd: float = 1_000.0
    """Any cost attribute of one span (a call, an attempt, a verifier run)."""
    max_tokens: int = 100_000_000
    """Any token count of one call (input, output, cached input)."""
    earliest_start: str = "2020-01-01"
    """The earliest UTC day a span may start on."""
    max_future_s: int = 86_400
    """How far past the ingest's own clock a span may start (clock skew)."""
    max_duration_s: int = 7 * 86_400
    """The longest a span may last (end minus start)."""

    def __post_init__(self) -> None:
        for name in ("max_line_bytes", "max_request_bytes", "max_attributes",
                     "max_string_chars", "max_tokens", "max_future_s", "max_duration_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpanLimits.{name} must be a positive integer, not {value!r}")
        if (isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int)
                or not 4 <= self.max_depth <= MAX_DEPTH_CEILING):
            raise ValueError(f"SpanLimits.max_depth must be an integer in "
                             f"[4, {MAX_DEPTH_CEILING}], not {self.max_depth!r}")
        cost = self.max_cost_usd
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 < cost < 1e300:
            raise ValueError(f"SpanLimits.max_cost_usd must be a positive number, not {cost!r}")
        try:
            date.fromisoformat(self.earliest_start)
        except (TypeError, ValueError):
            raise ValueError("SpanLimits.earliest_start must be a YYYY-MM-DD day, not "
                             f"{self.earliest_start!r}") from None

    @property
    def earliest_start_ns(self) -> int:
        days = date.fromisoformat(self.earliest_start).toordinal() - date(1970, 1, 1).toordinal()
        return days * 86_400 * 10**9
