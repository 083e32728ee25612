"""``autopilot receive``: an OTLP/HTTP receiver (``POST /v1/traces``) into the telemetry
tables, through the same ingest path as ``autopilot ingest`` (``telemetry.receiver``)."""

from __future__ import annotations

import click

from controlplane.cli.common import Context

__all__ = ["COMMANDS", "receive"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. There is no authentication: keep it on loopback and "
                   "run the Collector beside it.")
@click.option("--port", type=click.IntRange(0, 65535), default=4318, show_default=True,
              help="Port (4318 is OTLP/HTTP's).")
@click.option("--max-body-bytes", type=click.IntRange(1), default=20 << 20, show_default=True,
              help="Largest request body, before or after gzip (larger: 413).")
@click.option("--flush-seconds", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Store what was received at least this often.")
@click.option("--flush-spans", type=click.IntRange(1), default=10_000, show_default=True,
              help="Store as soon as this many spans wait.")
@click.pass_obj
def receive(obj: Context, host: str, port: int, max_body_bytes: int, flush_seconds: float,
            flush_spans: int) -> None:
    """Receive spans over OTLP/HTTP (protobuf or JSON, gzip) into the telemetry tables.

    Runs until interrupted (Ctrl-C or SIGTERM), then stores what waits and prints the
    counts: every span stored, a duplicate, ignored or quarantined (docs/otel-collector.md).
    """
    import uvicorn

    from controlplane.bootstrap import record_ingest
    from serving.fleet import is_loopback
    from telemetry.receiver import TRACES_PATH, OtlpReceiver

    obj.require_init()
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}, not loopback; the receiver has no "
                   "authentication", err=True)
    with OtlpReceiver(obj.state.telemetry_dir, max_body_bytes=max_body_bytes,
                      flush_seconds=flush_seconds, flush_spans=flush_spans) as receiver:
        click.echo(f"receiving OTLP/HTTP on http://{host}:{port}{TRACES_PATH} into "
                   f"{obj.state.telemetry_dir} (Ctrl-C stops)", err=True)
        uvicorn.run(receiver.app(), host=host, port=port, log_level="warning",
                    lifespan="off", access_log=False)
    stats = receiver.stats()
    if stats["spans_seen"]:
        record_ingest(obj.store(), {"source": "otlp-http", **stats})
    obj.emit(stats, title="receive")


COMMANDS = (receive,)
