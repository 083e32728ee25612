"""``autopilot receive``: the OTLP/HTTP receiver in the foreground, on loopback by default;
the stock SDK exporter delivers to it, SIGINT stores what waits and prints the counts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from contracts.spans import SPAN_CALL, Attr
from controlplane.cli import cli
from telemetry.warehouse import read_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receive_is_registered_and_binds_loopback_by_default():
    result = CliRunner().invoke(cli, ["receive", "--help"])
    assert result.exit_code == 0 and "OTLP/HTTP" in result.output
    defaults = {p.name: p.default for p in cli.commands["receive"].params}
    assert defaults["host"] == "127.0.0.1" and defaults["port"] == 4318


def test_receive_stores_what_the_sdk_exports_and_reports_on_sigint(tmp_path):
    state = tmp_path / "state"
    assert CliRunner().invoke(cli, ["--state-dir", str(state), "init"]).exit_code == 0
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli.root", "--state-dir", str(state), "--json",
         "receive", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "autopilot receive did not listen"
                time.sleep(0.1)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")))
        with provider.get_tracer("t").start_as_current_span(SPAN_CALL) as span:
            span.set_attributes({Attr.TASK_ID: "c-1", Attr.ATTEMPT: 1, Attr.TIER: "S",
                                 Attr.CACHE: "miss", Attr.INPUT_TOKENS: 10,
                                 Attr.OUTPUT_TOKENS: 2})
        provider.shutdown()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = json.loads(out)
    assert stats["stored"]["calls"] == 1 and stats["unaccounted"] == 0
    assert stats["pending_spans"] == 0
    assert read_table(state / "telemetry", "calls")["task_id"].tolist() == ["c-1"]
