"""The gateway's HTTP contract: request parsing and response bodies (pure; no I/O).

OpenAI-compatible completions and chat completions plus an ``autopilot`` object carrying
the task context (docs/serving.md, "HTTP contract"). Bad input is refused with every
problem naming its field (``BadRequest``), which the gateway returns as HTTP 400.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

__all__ = [
    "AutopilotFields",
    "BadRequest",
    "ParsedRequest",
    "chat_prompt",
    "completion_body",
    "parse_request",
]

MAX_TOKENS_LIMIT = 4096
Feature = StrictBool | StrictInt | StrictFloat | StrictStr | None


class BadRequest(ValueError):
    """A request the gateway refuses (HTTP 400); ``problems`` are ``(field, message)``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))

    def as_error(self) -> dict[str, Any]:
        return {"error": {"type": "invalid_request", "message": str(self),
                          "fields": [f for f, _ in self.problems]}}


class AutopilotFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: StrictStr = Field(min_length=1, max_length=200)
    attempt: StrictInt = Field(default=1, ge=1)
    family: StrictStr | None = None
    team: StrictStr | None = None
    repo: StrictStr | None = None
    features: dict[StrictStr, Feature] = Field(default_factory=dict)
    purpose: Literal["serve", "shadow", "gate"] = "serve"
    policy_version: StrictInt | None = Field(default=None, ge=1)
    response_cache: Literal["use", "bypass"] = "use"
    traceparent: StrictStr | None = None
    # Extension: the parent span of the shadow call (the caller's shadow attempt span).
    shadow_traceparent: StrictStr | None = None
    # Extension: added to the span clock, so a simulated day's calls line up with its tasks.
    clock_offset_ns: StrictInt = 0


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: StrictStr
    content: StrictStr


class _Common(BaseModel):
    # Other OpenAI fields (user, n=1, top_p ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: StrictStr = "auto"
    max_tokens: StrictInt = Field(default=32, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: StrictInt | StrictFloat | None = 0
    stop: StrictStr | list[StrictStr] | None = None
    autopilot: AutopilotFields | None = None


class _CompletionBody(_Common):
    prompt: StrictStr


class _ChatBody(_Common):
    messages: list[_Message] = Field(min_length=1)


@dataclass(frozen=True)
class ParsedRequest:
    kind: Literal["completion", "chat"]
    model: str
    prompt: str
    max_tokens: int
    stop: tuple[str, ...]
    ctx: AutopilotFields
    anonymous: bool  # no autopilot object: a one-off task id was made up

    @property
    def task_id(self) -> str:
        return self.ctx.task_id

    @property
    def attempt(self) -> int:
        return self.ctx.attempt


def chat_prompt(messages: list[Any]) -> str:
    """Chat messages as one prompt: their contents joined by newlines, in order (the
    reference models have no chat template)."""
    return "\n".join(m.content for m in messages)


def parse_request(body: Any, kind: Literal["completion", "chat"],
                  traceparent_header: str | None = None) -> ParsedRequest:
    """Validate a request body; raise ``BadRequest`` naming each bad field."""
    if not isinstance(body, dict):
        raise BadRequest([("<body>", f"must be a JSON object (got {type(body).__name__})")])
    model_cls = _CompletionBody if kind == "completion" else _ChatBody
    try:
        parsed = model_cls.model_validate(body)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"]) or "<body>"
            problems.append((path, f"{e['msg']} (got {_short(e.get('input'))})"))
        raise BadRequest(problems) from None
    if parsed.temperature not in (None, 0, 0.0):
        raise BadRequest([("temperature", f"only 0 is served: decoding is deterministic "
                                          f"(got {parsed.temperature})")])
    anonymous = parsed.autopilot is None
    ctx = parsed.autopilot or AutopilotFields(task_id=f"anon-{uuid.uuid4().hex[:16]}")
    if traceparent_header and not ctx.traceparent:
        ctx = ctx.model_copy(update={"traceparent": traceparent_header})
    stop = () if parsed.stop is None else (
        (parsed.stop,) if isinstance(parsed.stop, str) else tuple(parsed.stop))
    prompt = parsed.prompt if kind == "completion" else chat_prompt(parsed.messages)
    return ParsedRequest(kind=kind, model=parsed.model, prompt=prompt,
                         max_tokens=parsed.max_tokens, stop=stop, ctx=ctx, anonymous=anonymous)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def completion_body(kind: str, *, text: str, finish_reason: str | None, model: str,
                    input_tokens: int, output_tokens: int, cached_input_tokens: int,
                    autopilot: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI completion (or chat completion) body with the ``autopilot`` object."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason}
        obj, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj, prefix = "text_completion", "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached_input_tokens}},
        "autopilot": autopilot,
    }
