"""The ``autopilot`` command: tables for people, ``--json`` for machines.

Each command is a thin shell over the package fronts; no rule lives here. Errors the
product raises on purpose (refused documents, store rules) print one clear message and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from controlplane.cli.common import Context, check_day, weights

__all__ = ["COMMANDS"]

STARTER = Path(__file__).resolve().parent.parent / "starter"


# ---------------------------------------------------------------------------------- init
@click.command()
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              help="Fleet manifest to start from (default: the starter manifest).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False),
              help="Initial policy (default: the starter cascade).")
@click.option("--force", is_flag=True, help="Overwrite settings and fleet of an existing state dir.")
@click.option("--sample", is_flag=True,
              help="Also ingest two simulated days of sample telemetry (try `autopilot "
                   "metrics` next; simulated, not measured).")
@click.pass_obj
def init(obj: Context, fleet_file: str | None, policy_file: str | None, force: bool,
         sample: bool) -> None:
    """Create the state directory: settings, fleet manifest, store, active policy v1."""
    from controlplane.bootstrap import ingest_sample, initialise_state

    result = initialise_state(
        obj.state,
        fleet_file=Path(fleet_file) if fleet_file else None,
        policy_file=Path(policy_file) if policy_file else None,
        force=force,
    )
    if sample:
        report = ingest_sample(obj.state)
        held = sum(report["duplicates_skipped"].values())
        result["sample_telemetry"] = (
            f"{report['stored_total']} rows from {report['spans_seen']} simulated spans"
            + (f" ({held} already held)" if held else "") + "; next: autopilot metrics")
    obj.emit(result, title=f"autopilot state in {obj.state.root}")


# -------------------------------------------------------------------------------- ingest
@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.pass_obj
def ingest(obj: Context, paths: tuple[str, ...]) -> None:
    """Ingest telemetry files (OTLP/JSON or flat JSON lines; folders are walked)."""
    from telemetry.ingest import ingest_paths

    obj.require_init()
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    report = ingest_paths(files, obj.state.telemetry_dir)
    data = report.as_dict() if hasattr(report, "as_dict") else report.__dict__
    obj.emit(data, title="ingest")
    from controlplane.bootstrap import record_ingest

    record_ingest(obj.store(), data)


# ------------------------------------------------------------------------------- metrics
def _window_options(fn):
    fn = click.option("--since", callback=check_day,
                      help="First day (YYYY-MM-DD), inclusive.")(fn)
    fn = click.option("--until", callback=check_day,
                      help="Last day (YYYY-MM-DD), inclusive.")(fn)
    return fn


@click.command()
@click.option("--by", default="", help="Group by any of team,repo,family,day (comma-separated).")
@click.option("--columns", default=None,
              help="Columns of the table (comma-separated, or `all`); default: the key ones. "
                   "--json always has every column.")
@_window_options
@click.pass_obj
def metrics(obj: Context, by: str, columns: str | None, since: str | None,
            until: str | None) -> None:
    """Cost per Green PR, FPY, tier mix, cache hit rate, eval share (per group)."""
    from controlplane.views import metrics_columns, metrics_rows

    keys = [k.strip() for k in by.split(",") if k.strip()]
    bad = [k for k in keys if k not in ("team", "repo", "family", "day")]
    if bad:
        raise click.BadParameter(f"unknown group {bad[0]!r}; use team, repo, family, day",
                                 param_hint="--by")
    rows = metrics_rows(obj.state, obj.fleet(), keys, since, until)
    if not rows:
        obj.emit([] if obj.as_json else "no telemetry in this window: run `autopilot ingest`")
        return
    if obj.as_json:
        obj.emit(rows)
        return
    try:
        shown = metrics_columns(rows, keys, columns)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--columns") from None
    obj.emit(rows, title="metrics", columns=shown)


@click.command()
@_window_options
@click.option("--forecast", is_flag=True,
              help="Also forecast the next days of spend per team against its budget.")
@click.option("--horizon", type=click.IntRange(1, 90), default=7, show_default=True,
              help="Days the forecast covers.")
@click.option("--level", type=click.FloatRange(0.5, 0.99), default=0.9, show_default=True,
              help="Coverage of the forecast's interval.")
@click.pass_obj
def finops(obj: Context, since: str | None, until: str | None, forecast: bool, horizon: int,
           level: float) -> None:
    """The FinOps register FIN-01..FIN-09 with breaches, and team budgets."""
    from controlplane.views import finops_rows

    register, budgets = finops_rows(obj.state, obj.fleet(), since, until)
    rows = None
    if forecast:
        from controlplane.spend import forecast_rows

        rows = forecast_rows(obj.state, obj.fleet(), since, until, horizon=horizon, level=level)
    if obj.as_json:
        obj.emit({"register": register, "budgets": budgets,
                  **({"forecast": rows} if forecast else {})})
        return
    obj.emit(register, title="FinOps register", columns=["id", "name", "value", "target", "status", "message"])
    if budgets:
        obj.emit(budgets, title="team budgets")
    if forecast:
        obj.emit(_forecast_table(rows or [], level) or "no spend to forecast in this window",
                 title=f"spend forecast, next {horizon} days")


def _forecast_table(rows: list[dict], level: float) -> list[dict]:
    """One line per team: the horizon's total with its interval, the budget and when the
    point (and the upper bound) reaches it."""
    return [{
        "team": r["team"],
        "method": r["method"],
        "history_days": r["history_days"],
        "next_day_usd": round(r["point"][0], 4) if r["point"] else None,
        "total_usd": round(r["total_usd"], 4),
        f"interval_{level:.0%}": f"{r['total_lower_usd']:.4f} .. {r['total_upper_usd']:.4f}",
        "budget_usd_per_day": r["budget_usd_per_day"],
        "days_until_budget": r["days_until_budget"],
        "days_until_budget_upper": r["days_until_budget_upper"],
    } for r in rows]


# -------------------------------------------------------------------------------- policy
@click.group()
def policy() -> None:
    """Policy versions: show, diff, history, validate."""


def _load_policy_file(path: Path):
    """A policy file, refused unless it says ``kind: Policy``: any other document (say
    ``autopilot.yaml`` with the store's password) is refused without quoting its content,
    which a policy's field-by-field refusal would do."""
    from pydantic import BaseModel, ConfigDict

    from contracts.documents import DocumentError, load_yaml_document
    from policies.policy import load_policy

    class Head(BaseModel):
        model_config = ConfigDict(extra="ignore")
        kind: object = None

    try:
        kind = load_yaml_document(Head, path).kind
    except DocumentError as err:  # say why, without the lines of the file it may quote
        field, message = err.problems[0]
        reason = ("it is not a YAML mapping" if field == "<document>"
                  else message.splitlines()[0][:160])
        raise DocumentError(str(path), [(field, (
            f"refused before reading it as a policy: {reason} (policy show, diff and "
            "validate read only files with kind: Policy)"))]) from None
    if kind != "Policy":
        found = (repr(kind) if isinstance(kind, str) and len(kind) <= 40 and kind.isprintable()
                 else "missing" if kind is None else f"a {type(kind).__name__}")
        raise DocumentError(str(path), [("kind", (
            f"not a policy document (kind: {found}); policy show, diff and validate read "
            "only files with kind: Policy"))])
    return load_policy(path)


def _resolve_policy(obj: Context, ref: str | None):
    """A version number, a policy file, or (None) the active policy."""
    if ref and Path(ref).is_file():
        return _load_policy_file(Path(ref))
    store = obj.store()
    if ref is None:
        active = store.active_policy()
        if active is None:
            raise click.ClickException("no active policy: run `autopilot init`")
        return active.policy
    try:
        version = int(ref)
    except ValueError:
        raise click.BadParameter(f"{ref!r} is neither a policy version nor a file") from None
    return store.get_policy(version).policy


@policy.command("show")
@click.argument("ref", required=False)
@click.pass_obj
def policy_show(obj: Context, ref: str | None) -> None:
    """Show a policy (version, file, or the active one) as YAML."""
    p = _resolve_policy(obj, ref)
    if obj.as_json:
        obj.emit({"content_hash": p.content_hash, **p.model_dump(mode="json", by_alias=True)})
    else:
        click.echo(f"# version {p.metadata.version}  hash {p.content_hash}")
        click.echo(p.to_yaml())


@policy.command("diff")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def policy_diff_cmd(obj: Context, old: str, new: str) -> None:
    """What changed between two policies (versions or files)."""
    from policies.policy import describe_diff, policy_diff

    a, b = _resolve_policy(obj, old), _resolve_policy(obj, new)
    if obj.as_json:
        obj.emit([{"path": p, "old": x, "new": y} for p, x, y in policy_diff(a, b)])
        return
    lines = describe_diff(a, b)
    click.echo(f"v{a.metadata.version} ({a.content_hash[:12]}) -> v{b.metadata.version} "
               f"({b.content_hash[:12]})")
    click.echo("\n".join(f"  {line}" for line in lines) if lines else "  no change in spec")


@policy.command("history")
@click.pass_obj
def policy_history(obj: Context) -> None:
    """Every activation of a policy version, newest first."""
    from controlplane.views import history_rows

    obj.emit(history_rows(obj.store()), title="policy history")


@policy.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def policy_validate(obj: Context, path: str) -> None:
    """Validate a policy file (fields, and tiers/variants against the fleet)."""
    from policies.policy import validate_against_fleet

    p = _load_policy_file(Path(path))
    if obj.state.exists():
        validate_against_fleet(p, obj.fleet())
    obj.emit({"file": path, "valid": True, "version": p.metadata.version,
              "content_hash": p.content_hash})


# --------------------------------------------------------------------------------- fleet
@click.group()
def fleet() -> None:
    """The fleet manifest."""


@fleet.command("show")
@click.pass_obj
def fleet_show(obj: Context) -> None:
    """Tiers, variants, pinned files and the $/token each variant costs."""
    from controlplane.views import fleet_rows

    f = obj.fleet()
    obj.emit(fleet_rows(f), title=f"fleet {f.metadata.name} ({f.content_hash[:12]})")


@fleet.command("verify")
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Fleet manifest (default: the state dir's fleet.yaml).")
@click.pass_obj
def fleet_verify(obj: Context, fleet_file: str | None) -> None:
    """Check every pin: each variant's weights and each adapter hold exactly their pinned
    files with their sha256. Exit 1 naming mismatched, missing and extra files."""
    from contracts.manifest import check_fleet_pins, load_fleet
    from controlplane.views import pin_check, pin_check_lines

    if fleet_file is None:
        obj.require_init()
    path = Path(fleet_file) if fleet_file else obj.state.fleet_path
    manifest = load_fleet(path)
    result = pin_check(manifest, path, check_fleet_pins(manifest, path.parent))
    if obj.as_json:
        obj.emit(result)
    else:
        for line in pin_check_lines(result):
            click.echo(line)
    if not result["ok"]:
        sys.exit(1)


@fleet.command("train")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: training/fleet).")
@click.option("--seed", type=int, default=None, help="Training seed (default: the pinned one).")
@click.option("--quick", is_flag=True, help="A few steps per tier (smoke runs, tests).")
@click.option("--evaluator", type=click.Choice(["auto", "vllm", "transformers"]), default="auto",
              help="Engine that measures the held-out ladder (auto: vLLM when installed).")
@click.option("--no-ladder", is_flag=True, help="Skip the held-out ladder measurement.")
@click.option("--tiers", default=None, help="Comma-separated tiers to retrain (others kept).")
def fleet_train(out: str | None, seed: int | None, quick: bool, evaluator: str,
                no_ladder: bool, tiers: str | None) -> None:
    """Train the reference fleet (tiers, int8/int4 variants, fleet.yaml, ladder.json)."""
    from workload import train

    argv = ["--evaluator", evaluator]
    argv += ["--out", out] if out else []
    argv += ["--seed", str(seed)] if seed is not None else []
    argv += ["--quick"] if quick else []
    argv += ["--no-ladder"] if no_ladder else []
    argv += ["--tiers", tiers] if tiers else []
    train.main(argv)


# --------------------------------------------------------------------------------- serve
def _verbose_option(fn):
    return click.option("-v", "--verbose", is_flag=True,
                        help="Show Ray/vLLM output here (default: a log file under "
                             "<state dir>/logs/, progress lines here).")(fn)


@click.command()
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Fleet manifest (default: the state dir's fleet.yaml).")
@click.option("--port", type=int, default=None,
              help="Gateway HTTP port (0: a free one; default 8000, or on a cluster where "
                   "Ray Serve already runs, its port: another port is refused there).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the gateway listens on; beyond loopback API keys are required.")
@click.option("--require-keys", is_flag=True, default=False,
              help="Refuse calls without a valid API key (`autopilot keys create`); always "
                   "on beyond loopback, else from require_api_keys in autopilot.yaml.")
@click.option("--ray-address", default=None,
              help="Connect to this Ray cluster (default: start local Ray).")
@click.option("--reload-interval", type=float, default=2.0, show_default=True,
              help="Seconds between polls of the store's active policy.")
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Gateway replicas (default: $AUTOPILOT_GATEWAY_REPLICAS, else 1); they "
                   "share budgets, task routes and the response cache.")
@click.option("--emit-config", "emit_config", is_flag=False, flag_value="-", default=None,
              metavar="[FILE]", help="Write the fleet as a Ray Serve config (for `serve deploy` "
              "or a KubeRay RayService) to FILE, or stdout; start nothing.")
@click.option("--stub-tiers", is_flag=True, hidden=True,
              help="With --emit-config: engine-less tiers (tests of the cluster wiring).")
@_verbose_option
@click.pass_obj
def serve(obj: Context, fleet_file: str | None, port: int | None, host: str, require_keys: bool,
          ray_address: str | None, reload_interval: float, replicas: int | None,
          emit_config: str | None, stub_tiers: bool, verbose: bool) -> None:
    """Start the fleet (tier deployments + gateway) for the active policy; Ctrl-C stops it."""
    from controlplane.loop.distill import gateway_collector_config
    from controlplane.runlog import engine_logs_to_file
    from serving.fleet import FleetStartError, check_listen, serve_until_signalled

    obj.require_init()
    state = obj.state
    settings = state.settings()
    require_keys = require_keys or settings.require_api_keys
    try:
        check_listen(host, require_keys)  # refused before Ray or any engine starts
    except FleetStartError as exc:
        raise click.ClickException(str(exc)) from None
    if emit_config is not None:
        _emit_serve_config(obj, emit_config, Path(fleet_file) if fleet_file else None,
                           host=host, port=port, require_keys=require_keys,
                           reload_interval=reload_interval, replicas=replicas,
                           stub_tiers=stub_tiers)
        return
    with engine_logs_to_file(state.logs_dir, "serve", verbose=verbose) as (echo, _log):
        serve_until_signalled(Path(fleet_file) if fleet_file else state.fleet_path,
                              store_url=state.store_url(), spans_dir=state.spans_dir,
                              otlp_endpoint=settings.otlp_endpoint,
                              collector=gateway_collector_config(settings, state.root),
                              port=port, ray_address=ray_address,
                              reload_interval_s=reload_interval, echo=echo, host=host,
                              require_keys=require_keys, gateway_replicas=replicas)


def _emit_serve_config(obj: Context, target: str, fleet_file: Path | None, *, host: str,
                       port: int | None, require_keys: bool, reload_interval: float,
                       replicas: int | None, stub_tiers: bool) -> None:
    import os

    import yaml

    from serving.fleet import DEFAULT_HTTP_PORT
    from serving.serve_config import fleet_serve_config

    state = obj.state
    with obj.store() as store:
        record = store.active_policy()
    if record is None:
        raise click.ClickException("the store has no active policy: run `autopilot init`")
    otlp_endpoint = state.settings().otlp_endpoint
    config = fleet_serve_config(
        fleet_file or state.fleet_path, state.store_url(), record.policy, host=host,
        port=port or DEFAULT_HTTP_PORT, gateway_replicas=replicas or int(os.environ.get("AUTOPILOT_GATEWAY_REPLICAS", "1")),
        require_keys=require_keys, reload_interval_s=reload_interval,
        otlp_endpoint=otlp_endpoint, stub_tiers=stub_tiers,
        spans_path=None if otlp_endpoint else str(state.spans_dir / "gateway-deployed.jsonl"))

    class _Plain(yaml.SafeDumper):  # every application spelt out, no YAML anchors
        def ignore_aliases(self, data):
            return True

    text = (f"# autopilot serve --emit-config: policy v{record.version}; run with "
            "`serve deploy` or `serve run` (paths must exist on every node)\n"
            + yaml.dump(config, Dumper=_Plain, sort_keys=False))
    if target == "-":
        click.echo(text, nl=False)
        return
    Path(target).write_text(text)
    click.echo(f"wrote {target} (policy v{record.version}: "
               f"{', '.join(a['name'] for a in config['applications'])})", err=True)


# --------------------------------------------------------------------------------- drive
@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="The gateway (autopilot serve).")
@click.option("--tasks", type=int, default=200, show_default=True)
@click.option("--day", default=None, help="UTC day the spans are stamped with (default today).")
@click.option("--seed", type=int, default=11, show_default=True)
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option("--rate", type=float, default=None, help="Poisson arrivals per second.")
@click.option("--families", default=None, help="Mix, e.g. expr_eval=2,list_ops=1.")
@click.option("--difficulties", default=None, help="Mix, e.g. 1=3,2=2,3=1.")
@click.option("--teams", default=None, help="Mix, e.g. payments=0.5,search=0.5.")
@click.option("--max-attempts", type=int, default=10, show_default=True,
              help="The harness's own cap per task (the policy's caps apply first).")
@click.option("--ingest/--no-ingest", default=True, show_default=True,
              help="Ingest the spans into the state directory afterwards.")
@click.pass_obj
def drive(obj: Context, url: str, tasks: int, day: str | None, seed: int, concurrency: int,
          rate: float | None, families: str | None, difficulties: str | None,
          teams: str | None, max_attempts: int, ingest: bool) -> None:
    """Play the reference agent harness against the gateway: tasks try, verify, escalate or
    repair until green or a cap, emitting agent.task and agent.attempt spans."""
    from datetime import UTC, datetime

    from serving.client import GatewayClient
    from telemetry.otel import configure_tracing, shutdown_tracing
    from workload.driver import WorkloadSpec
    from workload.driver import drive as run_drive

    obj.require_init()
    fields: dict = {"tasks": tasks, "seed": seed, "concurrency": concurrency,
                    "day": day or datetime.now(UTC).date().isoformat(),
                    "arrival_rate_per_s": rate, "max_attempts": max_attempts}
    if families:
        fields["families"] = weights(families)
    if difficulties:
        fields["difficulties"] = weights(difficulties, key=int)
    if teams:
        fields["teams"] = weights(teams)
    spec = WorkloadSpec(**fields)
    state = obj.state
    client = GatewayClient(url)
    try:
        serving = client.policy()
    except Exception as exc:
        raise click.ClickException(f"no gateway answers at {url} ({exc}); start one with "
                                   "`autopilot serve`") from exc
    click.echo(f"gateway {url} serves policy v{serving.get('version')}", err=True)
    provider = configure_tracing(jsonl_path=state.spans_dir / f"driver-{spec.day}-{seed}.jsonl")

    def progress(done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            click.echo(f"  {done}/{total} tasks", err=True)

    try:
        report = run_drive(spec, client, tracer_provider=provider, progress=progress)
    finally:
        shutdown_tracing()
    client.flush_spans()
    obj.emit(report.as_dict(), title=f"drive {spec.day}")
    if ingest:
        from controlplane.bootstrap import record_ingest
        from telemetry.ingest import ingest_paths

        files = sorted(p for p in state.spans_dir.rglob("*.jsonl") if p.is_file())
        result = ingest_paths(files, state.telemetry_dir).as_dict()
        record_ingest(obj.store(), result)
        click.echo(f"ingested: {result.get('stored')}", err=True)


# --------------------------------------------------------------------------------- audit
@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log."""


def _anchors_of(values: tuple[str, ...]) -> list:
    """``--anchor`` values: a file (an ``audit anchor --out`` file, or JSON lines of
    anchors) or ``HASH@SEQ``."""
    from store import parse_anchor_text, read_anchor_file

    anchors = []
    for value in values:
        path = Path(value).expanduser()
        if path.is_file():
            anchors += read_anchor_file(path)
        elif "@" in value:
            anchors += parse_anchor_text(value, source="--anchor")
        else:
            raise click.BadParameter(f"{value!r}: no such file, and not HASH@SEQ",
                                     param_hint="--anchor")
    return anchors


@audit.command("verify")
@click.option("--anchor", "anchor_values", multiple=True, metavar="FILE|HASH@SEQ",
              help="An anchor kept outside the database (`autopilot audit anchor --out`, a "
                   "report's audit head): the log must still hold that entry with that "
                   "hash. Repeatable; the state dir's audit/anchors.jsonl is always checked.")
@click.pass_obj
def audit_verify(obj: Context, anchor_values: tuple[str, ...]) -> None:
    """Recompute the hash chain, replay the log against the state tables (active policy,
    stored policies, proposals, approvals, evidence, canaries) and check every anchor;
    exit 1 naming each disagreement."""
    anchors = _anchors_of(anchor_values)
    store = obj.store()
    result = store.verify_audit(anchors=anchors)
    head = store.audit_anchor()
    data = {**result.as_dict(), "head_seq": head.seq, "head_hash": head.entry_hash,
            "anchor_file": None if store.anchor_file is None else str(store.anchor_file)}
    if obj.as_json:
        obj.emit(data)
    else:
        obj.emit({**data, "problems": "\n".join(result.problems) or "-"},
                 title="audit verify")
    if not result.ok:
        sys.exit(1)


@audit.command("anchor")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Also write the anchor to this file (JSON), for `audit verify --anchor`.")
@click.pass_obj
def audit_anchor(obj: Context, out_file: str | None) -> None:
    """Print the audit chain head (seq, hash, time) as JSON: keep it outside the database
    (a file, a ticket) and a truncated or rewritten log fails `audit verify --anchor`."""
    import json

    from contracts.files import atomic_write_text

    anchor = obj.store().audit_anchor().as_dict()
    text = json.dumps(anchor, indent=2, sort_keys=True)
    if out_file:
        atomic_write_text(Path(out_file).expanduser(), text + "\n", fsync=True)
    click.echo(text)


@audit.command("log")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def audit_log(obj: Context, limit: int) -> None:
    """The latest audit entries."""
    from controlplane.views import audit_rows

    obj.emit(audit_rows(obj.store(), limit), title="audit log")


# -------------------------------------------------------------------------------- whatif
def _calibration_widening(obj: Context) -> dict[str, float] | None:
    """The nightly's per-lever interval inflation, when this state directory has a store."""
    from controlplane.loop.calibration import inflation_factors

    if not obj.state.exists():
        return None  # whatif needs no state directory; no record, no widening
    with obj.store() as store:
        return inflation_factors(store.calibration_records())


@click.command()
@click.option("--telemetry", "telemetry", multiple=True, required=True,
              type=click.Path(exists=True),
              help="Ingested telemetry directory, or span files/folders (repeatable).")
@click.option("--fleet", "fleet_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Fleet manifest YAML.")
@click.option("--policy", "policy_ref", default=None,
              help="Active policy YAML (default: the state directory's active policy).")
@click.option("--lever", type=click.Choice(["routing", "quantization", "cache", "distillation",
                                            "guardrails", "all"]), default="routing",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write each candidate as a policy YAML (and whatif.json) here.")
@click.option("--candidates", default=10, show_default=True, help="Candidates to rank.")
@click.option("--trials", default=8, show_default=True, help="Ray Tune trials per lever run.")
@click.option("--per-trial", default=32, show_default=True, help="Candidates each trial evaluates.")
@click.option("--seed", default=0, show_default=True)
@click.option("--executor", type=click.Choice(["tune", "inline"]), default="tune",
              show_default=True, help="Ray Tune, or Optuna in this process (no Ray).")
@_window_options
@click.pass_obj
def whatif(obj: Context, telemetry: tuple[str, ...], fleet_file: str, policy_ref: str | None,
           lever: str, out_dir: str | None, candidates: int, trials: int, per_trial: int,
           seed: int, executor: str, since: str | None, until: str | None) -> None:
    """Search cheaper policies on a telemetry window; no fleet needs to run."""
    from experiments.whatif import run_whatif

    active = _resolve_policy(obj, policy_ref)
    report = run_whatif(list(telemetry), fleet_file, active, lever=lever, out=out_dir,
                        candidates=candidates, since=since, until=until, trials=trials,
                        per_trial=per_trial, seed=seed, executor=executor,
                        progress=not obj.as_json, widen=_calibration_widening(obj))
    if obj.as_json:
        obj.emit(report.as_dict())  # numbers: every interval {point, low, high}
        return
    obj.emit(report.active_row(), title="active policy on this window")
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.rows:
        obj.emit([{k: v for k, v in r.items() if k != "file"} for r in report.rows],
                 title=f"candidates ({report.evaluated} evaluated, {report.seconds:.1f} s; "
                       "ranked by the high end of d_cost_ci)")
        if out_dir:
            click.echo(f"wrote {len(report.files)} candidate policies and whatif.json to {out_dir}")
    else:
        click.echo("no candidate found")


# ---------------------------------------------------------------------------------- gate
@click.command()
@click.option("--candidate", "candidate_file", required=True,
              type=click.Path(exists=True, dir_okay=False), help="Candidate policy YAML.")
@click.option("--dry-run", is_flag=True, help="Evaluate and record, but never block (exit 0).")
@click.option("--suite", "suite_file", type=click.Path(exists=True, dir_okay=False),
              help="Gate suite (JSON/YAML; default: the pinned reference suite).")
@click.option("--suite-hash", help="Refuse the suite unless its content hash is this one.")
@click.option("--url", help="Base URL of a running gateway (default: start the fleet).")
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              help="Fleet manifest (default: the state directory's fleet.yaml).")
@click.option("--proposal", "proposal_id", help="Record the verdict on this proposal.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Cases in flight at once.")
@click.option("--cache-sample", default=30, show_default=True, type=click.IntRange(1, 10_000),
              help="Cases sampled by the cache-safety gate.")
@click.pass_obj
def gate(obj: Context, candidate_file: str, dry_run: bool, suite_file: str | None,
         suite_hash: str | None, url: str | None, fleet_file: str | None,
         proposal_id: str | None, concurrency: int, cache_sample: int) -> None:
    """Run the deterministic gates for a candidate policy against the active one."""
    from controlplane.loop.gating import gate_lines, run_gate_command
    from gates.runner import GateOptions

    obj.require_init()
    echo = (lambda _line: None) if obj.as_json else click.echo
    result = run_gate_command(
        obj.state, candidate_file, suite_path=suite_file, suite_hash=suite_hash, url=url,
        fleet_path=fleet_file, dry_run=dry_run, proposal_id=proposal_id,
        options=GateOptions(concurrency=concurrency, cache_sample=cache_sample), echo=echo)
    bundle = result.bundle
    if obj.as_json:
        obj.emit({"overall": bundle["overall"], "dry_run": dry_run,
                  "candidate_version": bundle["candidate"]["version"],
                  "gates": [{"name": g["name"], "phase": g["phase"], "message": g["message"]}
                            for g in bundle["gates"]],
                  "bundle_hash": bundle["bundle_hash"],
                  "evidence_sha256": result.evidence_sha256,
                  "evidence_path": str(result.evidence_path)})
    else:
        for line in gate_lines(bundle):
            click.echo(line)
        click.echo(f"{'overall':<24} {bundle['overall']:<12} "
                   f"{'dry run: not blocking' if dry_run else ''}".rstrip())
        click.echo(f"evidence {result.evidence_sha256} -> {result.evidence_path} "
                   f"(bundle hash {bundle['bundle_hash']})")
    if result.exit_code:
        sys.exit(result.exit_code)


# ---------------------------------------------------------------------------------- demo
@click.command()
@click.option("--quick", is_flag=True, help="A smaller day and search (about 5 minutes).")
@click.option("--tasks", type=int, default=None, help="Tasks per day (default: 800, quick 240).")
@click.option("--simulated", is_flag=True,
              help="The quick tour without engines: a seeded span simulator, not measured.")
@click.option("--fresh/--keep", default=True, show_default=True,
              help="Start from an empty state directory.")
@click.option("--nights", type=click.IntRange(1, 14), default=None,
              help="Nights of the loop (default: 3, quick 1); a day is driven before each "
                   "and after the last.")
@_verbose_option
@click.pass_obj
def demo(obj: Context, quick: bool, tasks: int | None, simulated: bool, fresh: bool,
         nights: int | None, verbose: bool) -> None:
    """Run the whole loop on the embedded default (what `make demo` runs)."""
    import shutil

    from controlplane.demo import run_demo, run_simulated_demo
    from controlplane.runlog import engine_logs_to_file

    if simulated:
        run_simulated_demo(obj.state, tasks=tasks or 3000, fresh=fresh, echo=click.echo)
        return
    if fresh and obj.state.root.exists():  # emptied here, so the log file below survives
        shutil.rmtree(obj.state.root)
    with engine_logs_to_file(obj.state.logs_dir, "demo", verbose=verbose) as (echo, _log):
        run_demo(obj.state, quick=quick, tasks=tasks, fresh=False, nights=nights, echo=echo)


COMMANDS = [init, ingest, metrics, finops, policy, fleet, serve, drive, audit, whatif, gate, demo]
