"""Spans following the OpenTelemetry GenAI semantic conventions are read onto the product's
span contract where its own attribute is absent (``telemetry/parsing.py``), on every path:
flat JSON lines (Arrow and line by line), OTLP/JSON, ``check_span``."""

from __future__ import annotations

import json

import pytest
from telemetry_testkit import T0, call_span, frames, hex_id, quarantined, to_otlp, write_flat

from contracts.spans import SPAN_ATTEMPT, Attr, GenAI
from telemetry.ingest import ingest_paths
from telemetry.parsing import BISECT_LEAF_LINES, Ignored, Reason, check_span


def genai_span(n: int, name: str, op: str, **attrs) -> dict:
    return {"name": name, "trace_id": hex_id(n, 32), "span_id": hex_id(n * 10 + 5, 16),
            "parent_span_id": None, "start_time_unix_nano": T0 + n * 1000,
            "end_time_unix_nano": T0 + n * 1000 + 500,
            "attributes": {GenAI.OPERATION_NAME: op, **attrs}}


def chat(n: int, **attrs) -> dict:
    """A chat call as a GenAI instrumentation writes it, with the product's attribution."""
    base = {GenAI.PROVIDER_NAME: "openai", Attr.REQUEST_MODEL: "coder-small",
            GenAI.RESPONSE_MODEL: "coder-small-0601", GenAI.CONVERSATION_ID: f"task-{n}",
            Attr.INPUT_TOKENS: 1000 + n, Attr.OUTPUT_TOKENS: 50,
            GenAI.CACHE_READ_INPUT_TOKENS: 256, Attr.TIER: "S", Attr.ATTEMPT: 1}
    return genai_span(n, "chat coder-small", "chat", **{**base, **attrs})


def agent(n: int, **attrs) -> dict:
    base = {GenAI.AGENT_NAME: "fixer", GenAI.AGENT_ID: "a-1",
            GenAI.CONVERSATION_ID: f"task-{n}", Attr.ATTEMPT: 1, Attr.TIER: "S",
            Attr.PURPOSE: "serve", Attr.PASSED: True}
    span = genai_span(n, "invoke_agent fixer", "invoke_agent", **{**base, **attrs})
    span["span_id"] = hex_id(n * 10 + 6, 16)
    return span


def mixed(n: int) -> list[dict]:
    tool = genai_span(n, "execute_tool pytest", "execute_tool")
    tool["span_id"] = hex_id(n * 10 + 7, 16)
    other = genai_span(n, "GET /", "chat")
    del other["attributes"][GenAI.OPERATION_NAME]
    other["span_id"] = hex_id(n * 10 + 8, 16)
    return [chat(n), agent(n), tool, other]


@pytest.mark.parametrize("form", ["flat-arrow", "flat-lines", "otlp"])
def test_genai_spans_are_read_as_calls_and_attempts_on_every_path(tmp_path, form):
    tasks = BISECT_LEAF_LINES if form == "flat-arrow" else 3  # > leaf lines: Arrow's path
    spans = [s for n in range(tasks) for s in mixed(n)]
    path = tmp_path / "spans.jsonl"
    if form == "otlp":
        path.write_text(json.dumps(to_otlp(spans)) + "\n")
    else:
        write_flat(path, spans)
    report = ingest_paths([path], tmp_path / "tel")
    assert report.balanced and report.quarantined_total == 0
    assert report.stored == {"tasks": 0, "attempts": tasks, "calls": tasks}
    assert report.ignored_reasons == {Ignored.GENAI_OTHER_OPERATION: tasks,
                                      Ignored.OTHER_SPAN_NAME: tasks}
    tables = frames(tmp_path / "tel")
    call = tables["calls"].set_index("task_id").loc["task-1"]
    assert (call["model"], call["tier"], call["attempt"]) == ("coder-small", "S", 1)
    assert (call["input_tokens"], call["output_tokens"]) == (1001, 50)
    assert (call["cached_input_tokens"], call["cache"]) == (256, "prefix")
    attempt = tables["attempts"].set_index("task_id").loc["task-1"]
    assert (attempt["tier"], attempt["purpose"], bool(attempt["passed"])) == ("S", "serve", True)


def test_the_products_own_attribute_wins_over_the_genai_one():
    span = chat(1, **{Attr.TASK_ID: "mine", Attr.CACHED_INPUT_TOKENS: 10, Attr.CACHE: "miss"})
    assert check_span(span) is None
    stored = _stored_call(span)
    assert (stored["task_id"], stored["cached_input_tokens"], stored["cache"]) == (
        "mine", 10, "miss")


def test_product_calls_read_genai_cache_tokens_and_response_model_when_theirs_are_absent():
    span = call_span(1)
    for key in (Attr.CACHED_INPUT_TOKENS, Attr.CACHE, Attr.REQUEST_MODEL):
        del span["attributes"][key]
    span["attributes"][GenAI.CACHE_READ_INPUT_TOKENS] = 300
    span["attributes"][GenAI.RESPONSE_MODEL] = "served/bf16"
    stored = _stored_call(span)
    assert (stored["cached_input_tokens"], stored["cache"], stored["model"]) == (
        300, "prefix", "served/bf16")


def test_older_genai_names_are_read_when_the_current_ones_are_absent():
    span = chat(1)
    attrs = span["attributes"]
    for key in (Attr.INPUT_TOKENS, Attr.OUTPUT_TOKENS, GenAI.CACHE_READ_INPUT_TOKENS):
        del attrs[key]
    attrs.update({GenAI.INPUT_TOKENS_OLD: 70, GenAI.OUTPUT_TOKENS_OLD: 7,
                  GenAI.CACHE_READ_INPUT_TOKENS_OLD: 0})
    stored = _stored_call(span)
    assert (stored["input_tokens"], stored["output_tokens"]) == (70, 7)
    assert (stored["cached_input_tokens"], stored["cache"]) == (0, "miss")


def test_a_genai_call_without_cache_reads_is_a_miss():
    span = chat(1)
    del span["attributes"][GenAI.CACHE_READ_INPUT_TOKENS]
    stored = _stored_call(span)
    assert (stored["cached_input_tokens"], stored["cache"]) == (0, "miss")


@pytest.mark.parametrize(("change", "reason"), [
    ({GenAI.CONVERSATION_ID: None}, Reason.MISSING_TASK_ID),
    ({Attr.TIER: None}, Reason.MISSING_TIER),
    ({GenAI.CACHE_READ_INPUT_TOKENS: 5000}, Reason.BAD_TOKENS),  # more than the input
    ({GenAI.CACHE_READ_INPUT_TOKENS: "many"}, Reason.BAD_TOKENS),  # wrong type
    ({Attr.INPUT_TOKENS: -3}, Reason.NEGATIVE_TOKENS),
])
def test_a_genai_span_the_contract_refuses_is_quarantined_saying_how_it_was_read(
        tmp_path, change, reason):
    span = chat(1)
    for key, value in change.items():
        if value is None:
            del span["attributes"][key]
        else:
            span["attributes"][key] = value
    rejection = check_span(span)
    assert rejection is not None and rejection.reason == reason
    assert "gen_ai.operation.name='chat'" in rejection.message
    assert "read as llm.call" in rejection.message
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", [span, chat(2)])], tmp_path / "t")
    assert report.balanced and report.quarantined == {str(reason): 1}
    assert report.stored["calls"] == 1
    assert quarantined(tmp_path / "t")[0]["reason"] == reason


def test_an_agent_invocation_without_the_attempts_attribution_is_quarantined():
    span = agent(1)
    del span["attributes"][Attr.PURPOSE]
    rejection = check_span(span)
    assert rejection is not None and rejection.reason == Reason.UNKNOWN_PURPOSE
    assert f"read as {SPAN_ATTEMPT}" in rejection.message


def test_other_genai_operations_and_other_spans_are_counted_as_ignored(tmp_path):
    spans = [genai_span(n, f"{op} x", op) for n, op in enumerate(
        ["embeddings", "execute_tool", "create_agent", "invoke_workflow"])]
    spans.append({**spans[0], "name": "GET /", "span_id": hex_id(99, 16), "attributes": {}})
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", spans)], tmp_path / "t")
    assert report.balanced and report.stored_total == 0 and report.quarantined_total == 0
    assert report.ignored_reasons == {Ignored.GENAI_OTHER_OPERATION: 4,
                                      Ignored.OTHER_SPAN_NAME: 1}


def _stored_call(span: dict) -> dict:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report = ingest_paths([write_flat(root / "s.jsonl", [span])], root / "t")
        assert report.stored["calls"] == 1, report.as_dict()
        return frames(root / "t")["calls"].iloc[0].to_dict()
