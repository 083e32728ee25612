"""Every input line or span is accounted for (issue 14, defect 8).

Each non-blank line of a span file (or the one document of a pretty-printed file) ends as
spans stored, duplicates, ignored (with a reason) or quarantined (with a reason), and the
report's counts add up to what was read: ``spans_seen == stored + duplicates + ignored +
quarantined``. Before, an OTLP line without ``resourceSpans`` vanished uncounted, one bad
scope took the good spans beside it to the quarantine, and a flat file whose first line was
broken and whose second mentioned ``resourceSpans`` was read as OTLP, losing every span.
"""

from __future__ import annotations

import json
from typing import Any

from telemetry_testkit import frames, quarantined, to_otlp, workload, write_flat

from telemetry.ingest import ingest_paths


def _accounted(report: Any) -> int:
    return (report.stored_total + sum(report.duplicates_skipped.values()) + report.ignored
            + report.quarantined_total)


def _stored_ids(root) -> set[str]:
    return {sid for df in frames(root).values() for sid in df["span_id"]}


def test_an_otlp_line_without_resource_spans_is_counted_and_quarantined(tmp_path):
    spans = workload(10)
    src = tmp_path / "o.json"
    src.write_text("\n".join([json.dumps(to_otlp(spans[:15])), json.dumps({"foo": 1}),
                              json.dumps(to_otlp(spans[15:]))]) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 30
    assert report.spans_seen == 31 and report.quarantined_total == 1
    assert _accounted(report) == report.spans_seen
    [record] = quarantined(tmp_path / "tel")
    assert record["line"] == 2


def test_one_bad_scope_does_not_take_the_good_spans_beside_it(tmp_path):
    spans = workload(10)
    request = to_otlp(spans)
    resource = request["resourceSpans"][0]
    resource["scopeSpans"].insert(0, {"scope": {"name": "broken"}, "spans": "not a list"})
    resource["scopeSpans"].append("not a scope")
    request["resourceSpans"].append({"resource": {}, "scopeSpans": 7})
    request["resourceSpans"].append(["not", "an", "object"])
    src = tmp_path / "o.json"
    src.write_text(json.dumps(request) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 30
    assert report.quarantined == {"bad_otlp": 4}
    assert report.spans_seen == 34 and _accounted(report) == 34
    assert _stored_ids(tmp_path / "tel") == {s["span_id"] for s in spans}


def test_a_flat_file_mentioning_resource_spans_early_is_read_as_flat(tmp_path):
    spans = workload(100)
    spans[0]["attributes"]["x.note"] = "exported from resourceSpans"
    spans[1]["attributes"]["resourceSpans"] = "a key of that name, too"
    lines = ['{"name": "llm.call", "trace_id": "broken'] + [json.dumps(s) for s in spans]
    src = tmp_path / "s.jsonl"
    src.write_text("\n".join(lines) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 300
    assert report.quarantined == {"invalid_json": 1}
    assert report.spans_seen == 301 and _accounted(report) == 301


def test_an_empty_export_request_is_ignored_with_a_reason(tmp_path):
    src = tmp_path / "o.json"
    src.write_text(json.dumps({"resourceSpans": []}) + "\n"
                   + json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": []}]}]}) + "\n"
                   + json.dumps(to_otlp(workload(2))) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 6
    assert report.ignored == 2 and report.ignored_reasons == {"empty_otlp_request": 2}
    assert report.spans_seen == 8


def test_other_span_names_are_ignored_with_their_reason(tmp_path):
    spans = workload(3)
    spans.append(dict(spans[0], name="http.request", span_id="f" * 16))
    report = ingest_paths([write_flat(tmp_path / "s.jsonl", spans)], tmp_path / "tel")
    assert report.ignored_reasons == {"other_span_name": 1}


def test_flat_and_otlp_lines_mixed_in_one_file_are_both_read(tmp_path):
    spans = workload(200)
    lines = [json.dumps(s) for s in spans[:300]]
    lines.insert(100, json.dumps(to_otlp(spans[300:450])))
    lines.insert(250, json.dumps(to_otlp(spans[450:])))
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n")
    report = ingest_paths([src], tmp_path / "tel")
    assert report.stored_total == 600 and report.quarantined_total == 0
    assert _stored_ids(tmp_path / "tel") == {s["span_id"] for s in spans}


def test_the_report_carries_the_count_identity(tmp_path):
    spans = workload(200)
    src = write_flat(tmp_path / "s.jsonl", spans + spans[:10] + [None, None],
                     raw_lines={610: "{oops", 611: json.dumps(dict(spans[0], name="other"))})
    report = ingest_paths([src], tmp_path / "tel")
    assert report.spans_seen == 612
    assert report.accounted_for == _accounted(report) == 612
    assert report.balanced and report.as_dict()["unaccounted"] == 0
