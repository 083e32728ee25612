"""The gateway's HTTP contract: request parsing and response bodies (pure; no I/O).

OpenAI-compatible completions and chat completions plus an ``autopilot`` object carrying
the task context (docs/serving.md, "HTTP contract"). Bad input is refused with every
problem naming its field (``BadRequest``), which the gateway returns as HTTP 400 in
OpenAI's error shape (``error_body``). A parameter the gateway would otherwise have to
ignore (``n`` > 1, tools, log probabilities ...) is refused the same way, naming it.
A streamed request (``stream: true``) gets the same completion as server-sent events in
OpenAI's chunk shape (``stream_chunks``, ``sse_event``, ``SSE_DONE``).
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
    "SSE_DONE",
    "AutopilotFields",
    "BadRequest",
    "ParsedRequest",
    "chat_prompt",
    "completion_body",
    "error_body",
    "parse_request",
    "sse_event",
    "stream_chunks",
]

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 32
SSE_DONE = b"data: [DONE]\n\n"
Feature = StrictBool | StrictInt | StrictFloat | StrictStr | None


def error_body(message: str, *, kind: str = "invalid_request_error",
               param: str | None = None, code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type": kind, "param", "code"}}``
    (``extra`` keys, such as ``fields``, ride along inside ``error``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      **extra}}


class BadRequest(ValueError):
    """A request the gateway refuses (HTTP 400); ``problems`` are ``(field, message)``;
    ``code`` is OpenAI's (``invalid_value``, ``unsupported_parameter``, ...)."""

    def __init__(self, problems: list[tuple[str, str]], code: str = "invalid_value"):
        self.problems = problems
        self.code = code
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))

    def as_error(self) -> dict[str, Any]:
        fields = [f for f, _ in self.problems]
        param = fields[0] if fields and fields[0] != "<body>" else None
        return error_body(str(self), param=param, code=self.code, fields=fields)


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
    # A string or a list of content parts ({"type": "text", "text": ...}); read by
    # ``_message_text``, which names the part it refuses.
    content: Any = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: StrictBool = False


class _Common(BaseModel):
    # Other OpenAI fields (user, seed, top_p, metadata ...) are accepted and ignored: with
    # greedy decoding they change nothing. Those that would change the answer are refused
    # by ``_unsupported`` unless they hold their neutral value.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: StrictStr = "auto"
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: StrictInt | StrictFloat | None = 0
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = False
    stream_options: _StreamOptions | None = None
    autopilot: AutopilotFields | None = None


class _CompletionBody(_Common):
    prompt: Any = Field(...)  # a string, or a list of exactly one string (``_prompt_text``)


class _ChatBody(_Common):
    messages: list[_Message] = Field(min_length=1)


def _neutral(*values: Any) -> Any:
    # ``is`` for booleans and None, so 0 is not taken for False (completions' logprobs=0
    # asks for log probabilities).
    return lambda v: any(v is n if n is None or isinstance(n, bool) else
                         (v == n and not isinstance(v, bool)) for n in values)


# Parameters that would change the answer or its shape: accepted only at their neutral
# value (what the SDKs send by default), otherwise refused naming the parameter.
_UNSUPPORTED: tuple[tuple[str, Any, str, str], ...] = (
    ("n", _neutral(None, 1), "unsupported_value", "only n=1 is served (one choice per request)"),
    ("best_of", _neutral(None, 1), "unsupported_value", "only best_of=1 is served"),
    ("tools", lambda v: v is None or v == [], "unsupported_parameter",
     "tool calling is not served"),
    ("tool_choice", _neutral(None, "none"), "unsupported_parameter",
     "tool calling is not served"),
    ("functions", lambda v: v is None or v == [], "unsupported_parameter",
     "function calling is not served"),
    ("function_call", _neutral(None, "none"), "unsupported_parameter",
     "function calling is not served"),
    ("logprobs", _neutral(None, False), "unsupported_parameter",
     "log probabilities are not returned"),
    ("top_logprobs", _neutral(None, 0), "unsupported_parameter",
     "log probabilities are not returned"),
    ("echo", _neutral(None, False), "unsupported_parameter", "echo is not served"),
    ("suffix", _neutral(None, ""), "unsupported_parameter", "suffix (insertion) is not served"),
    ("logit_bias", lambda v: v is None or v == {}, "unsupported_parameter",
     "logit_bias is not served"),
    ("presence_penalty", _neutral(None, 0), "unsupported_value",
     "only 0 is served: decoding is greedy"),
    ("frequency_penalty", _neutral(None, 0), "unsupported_value",
     "only 0 is served: decoding is greedy"),
    ("response_format", lambda v: v is None or v == {"type": "text"}, "unsupported_value",
     "only {\"type\": \"text\"} is served (no JSON mode or schema)"),
    ("modalities", lambda v: v is None or v == ["text"], "unsupported_value",
     "only [\"text\"] is served"),
    ("audio", _neutral(None), "unsupported_parameter", "audio output is not served"),
    ("prediction", _neutral(None), "unsupported_parameter",
     "predicted outputs are not served"),
    ("web_search_options", _neutral(None), "unsupported_parameter", "web search is not served"),
)


def _unsupported(body: dict[str, Any]) -> None:
    refused = [(name, f"{why} (got {_short(body[name])})", code)
               for name, neutral, code, why in _UNSUPPORTED
               if name in body and not neutral(body[name])]
    if refused:
        raise BadRequest([(name, why) for name, why, _ in refused], code=refused[0][2])


def _message_text(i: int, message: _Message) -> str:
    """A message's content as text: a string, or its text parts joined by newlines (as
    vLLM joins them for a model without a multimodal template)."""
    content = message.content
    if isinstance(content, str):
        return content
    where = f"messages.{i}.content"
    if not isinstance(content, list):
        raise BadRequest([(where, ("must be a string or a list of text parts "
                                  f"(got {_short(content)})"))])
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise BadRequest([(f"{where}.{j}.type", ("only text parts are served "
                                                    f"(got {_short(kind)})"))],
                             code="unsupported_value")
        if not isinstance(part.get("text"), str):
            raise BadRequest([(f"{where}.{j}.text", (f"must be a string "
                                                    f"(got {_short(part.get('text'))})"))])
        texts.append(part["text"])
    return "\n".join(texts)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) == 1:
            return prompt[0]
        raise BadRequest([("prompt", f"one prompt per request is served (got {len(prompt)})")],
                         code="unsupported_value")
    raise BadRequest([("prompt", f"must be a string (got {_short(prompt)})")])


@dataclass(frozen=True)
class ParsedRequest:
    kind: Literal["completion", "chat"]
    model: str
    prompt: str
    max_tokens: int
    stop: tuple[str, ...]
    ctx: AutopilotFields
    anonymous: bool  # no autopilot object: a one-off task id was made up
    stream: bool = False  # answer as server-sent events (``stream_chunks``)
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage

    @property
    def task_id(self) -> str:
        return self.ctx.task_id

    @property
    def attempt(self) -> int:
        return self.ctx.attempt


def chat_prompt(messages: list[Any]) -> str:
    """Chat messages as one prompt: their contents joined by newlines, in order (the
    reference models have no chat template); a content given as parts is its text parts
    joined by newlines."""
    return "\n".join(_message_text(i, m) for i, m in enumerate(messages))


def parse_request(body: Any, kind: Literal["completion", "chat"],
                  traceparent_header: str | None = None) -> ParsedRequest:
    """Validate a request body; raise ``BadRequest`` naming each bad field."""
    if not isinstance(body, dict):
        raise BadRequest([("<body>", f"must be a JSON object (got {type(body).__name__})")])
    _unsupported(body)
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
        raise BadRequest([("temperature", (f"only 0 is served: decoding is deterministic "
                                          f"(got {parsed.temperature})"))],
                         code="unsupported_value")
    anonymous = parsed.autopilot is None
    ctx = parsed.autopilot or AutopilotFields(task_id=f"anon-{uuid.uuid4().hex[:16]}")
    if traceparent_header and not ctx.traceparent:
        ctx = ctx.model_copy(update={"traceparent": traceparent_header})
    stop = () if parsed.stop is None else (
        (parsed.stop,) if isinstance(parsed.stop, str) else tuple(parsed.stop))
    prompt = _prompt_text(parsed.prompt) if kind == "completion" else chat_prompt(parsed.messages)
    max_tokens = parsed.max_tokens or parsed.max_completion_tokens or DEFAULT_MAX_TOKENS
    return ParsedRequest(kind=kind, model=parsed.model, prompt=prompt, max_tokens=max_tokens,
                         stop=stop, ctx=ctx, anonymous=anonymous, stream=bool(parsed.stream),
                         include_usage=bool(parsed.stream and parsed.stream_options
                                            and parsed.stream_options.include_usage))


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


def stream_chunks(body: dict[str, Any], *, include_usage: bool = False) -> list[dict[str, Any]]:
    """A finished completion body (``completion_body``) as OpenAI's stream chunks.

    The tier engine answers a call whole, so the text arrives as one chunk: chat gets a
    role chunk, a content chunk and a finish chunk; a completion a text chunk and a finish
    chunk. With ``include_usage`` every chunk carries ``usage: null`` and one last chunk
    with no choices carries the usage, as OpenAI streams it. The ``autopilot`` object
    rides on the last chunk."""
    chat = body["object"] == "chat.completion"
    base = {"id": body["id"], "object": "chat.completion.chunk" if chat else "text_completion",
            "created": body["created"], "model": body["model"]}
    choice = body["choices"][0]
    finish = choice.get("finish_reason")
    if chat:
        text = choice["message"]["content"] or ""
        deltas = [{"role": "assistant", "content": ""}] + ([{"content": text}] if text else [])
        choices = [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}
                   for d in deltas]
        choices.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish})
    else:
        choices = [{"index": 0, "text": choice["text"], "logprobs": None, "finish_reason": None},
                   {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}]
    usage: dict[str, Any] = {"usage": None} if include_usage else {}
    chunks = [{**base, "choices": [c], **usage} for c in choices]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    if "autopilot" in body:
        chunks[-1]["autopilot"] = body["autopilot"]
    return chunks


def sse_event(chunk: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``chunk`` (end the stream with ``SSE_DONE``)."""
    import orjson

    return b"data: " + orjson.dumps(chunk) + b"\n\n"
