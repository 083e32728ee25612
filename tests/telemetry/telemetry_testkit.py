"""Span builders and readers shared by the telemetry tests (ingest, parsing, warehouse)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from contracts.spans import (
    FEATURE_PREFIX,
    SPAN_ATTEMPT,
    SPAN_CALL,
    SPAN_TASK,
    Attr,
    CacheStatus,
    Outcome,
    Purpose,
)
from contracts.tables import TABLES
from telemetry.warehouse import read_table

DAY = "2026-11-20"
T0 = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()) * 10**9


# ------------------------------------------------------------------------ span builders
def hex_id(n: int, width: int) -> str:
    return f"{n + 1:0{width}x}"


def task_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.TASK_ID: f"task-{n}", Attr.FAMILY: "expr_eval", Attr.TEAM: "payments",
        Attr.REPO: "api", Attr.AGENT: "sim", Attr.OUTCOME: str(Outcome.GREEN),
        Attr.VERIFIER_PASSED: True, Attr.VERIFIER_COST_USD: 0.002,
        Attr.POLICY_VERSION: "3", FEATURE_PREFIX + "difficulty": 2,
        FEATURE_PREFIX + "lang": "py",
    }
    return _span(SPAN_TASK, n, 0, None, {**base, **attrs})


def attempt_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.TASK_ID: f"task-{n}", Attr.ATTEMPT: 1, Attr.TIER: "small",
        Attr.VARIANT: "int8", Attr.PASSED: True, Attr.PURPOSE: str(Purpose.SERVE),
        Attr.PROPENSITY: 0.8, Attr.POLICY_VERSION: "3",
    }
    return _span(SPAN_ATTEMPT, n, 1, hex_id(n * 10, 16), {**base, **attrs})


def call_span(n: int = 0, **attrs: Any) -> dict[str, Any]:
    base = {
        Attr.REQUEST_MODEL: "qwen-small", Attr.INPUT_TOKENS: 1000, Attr.OUTPUT_TOKENS: 100,
        Attr.TIER: "small", Attr.VARIANT: "int8", Attr.CACHE: str(CacheStatus.PREFIX),
        Attr.CACHED_INPUT_TOKENS: 400, Attr.TASK_ID: f"task-{n}", Attr.ATTEMPT: 1,
        Attr.POLICY_VERSION: "3",
    }
    return _span(SPAN_CALL, n, 2, hex_id(n * 10 + 1, 16), {**base, **attrs})


def _span(name: str, n: int, offset: int, parent: str | None, attrs: dict) -> dict[str, Any]:
    return {
        "name": name,
        "trace_id": hex_id(n, 32),
        "span_id": hex_id(n * 10 + offset, 16),
        "parent_span_id": parent,
        "start_time_unix_nano": T0 + n * 1000 + offset,
        "end_time_unix_nano": T0 + n * 1000 + offset + 500,
        "attributes": {k: v for k, v in attrs.items() if v is not None},
    }


def workload(tasks: int) -> list[dict[str, Any]]:
    spans = []
    for n in range(tasks):
        spans += [call_span(n), attempt_span(n), task_span(n)]
    return spans


def write_flat(path: Path, spans: list[Any], *, raw_lines: dict[int, str] | None = None) -> Path:
    """Spans as JSON lines; ``raw_lines`` replaces given (0-based) lines with raw text."""
    lines = [json.dumps(s) for s in spans]
    for index, text in (raw_lines or {}).items():
        lines[index] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def to_otlp(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Flat spans as one OTLP/JSON export request (int64 as strings, as proto3 JSON does)."""
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": v}

    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "fleet-autopilot"}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [{
            "traceId": s["trace_id"], "spanId": s["span_id"],
            "parentSpanId": s["parent_span_id"] or "", "name": s["name"], "kind": 1,
            "startTimeUnixNano": str(s["start_time_unix_nano"]),
            "endTimeUnixNano": str(s["end_time_unix_nano"]),
            "attributes": [{"key": k, "value": value(v)} for k, v in s["attributes"].items()],
            "status": {},
        } for s in spans]}],
    }]}


def quarantined(root: Path) -> list[dict[str, Any]]:
    # split on "\n" only: a kept line may hold U+0085 or U+2028, which splitlines() splits on
    return [json.loads(line) for f in sorted((root / "quarantine").glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").split("\n") if line]


def frames(root: Path) -> dict[str, pd.DataFrame]:
    return {t: read_table(root, t).sort_values("span_id").reset_index(drop=True)
            for t in TABLES}


def mutate(span: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy with top-level fields or attributes changed; ``...`` removes one."""
    span = copy.deepcopy(span)
    for key, value in changes.items():
        key = key.replace("__", ".")
        target = span if key in span else span["attributes"]
        if value is ...:
            target.pop(key, None)
        else:
            target[key] = value
    return span
