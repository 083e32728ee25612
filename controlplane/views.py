"""Rows for people and machines: what the CLI, the demo and reports print.

Each function reads through an adapter (store, warehouse) and shapes plain dicts; the
rules themselves live in the cost model, metrics and FinOps modules.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest
    from controlplane.settings import StateDir

__all__ = [
    "METRICS_KEY_COLUMNS",
    "audit_rows",
    "finops_rows",
    "fleet_rows",
    "frame_records",
    "history_rows",
    "metric_options",
    "metrics_columns",
    "metrics_rows",
    "pin_check",
    "pin_check_lines",
    "print_rows",
    "read_metric_frames",
]


# What ``fleet show`` says of an API-priced variant's pins.
API_PRICED_PINS = "api-priced, no weights to pin"


def pin_check(fleet: FleetManifest, manifest_path: Any, reports: Any) -> dict[str, Any]:
    """``fleet verify`` as one dict: per variant or adapter (``contracts.manifest.PinReport``)
    the files it pins and its mismatched, missing and extra files by path."""
    from collections import Counter

    def paths(r: Any, kind: str) -> list[str]:
        return [p.path for p in r.problems if p.kind == kind]

    checked = [{
        "target": r.target, "tier": r.tier, "variant": r.variant, "adapter": r.adapter,
        "directory": r.directory, "api_priced": r.api_priced, "pinned": r.pinned,
        "ok": r.ok, "mismatched": paths(r, "mismatch"), "missing": paths(r, "missing"),
        "extra": paths(r, "extra"), "unpinned": bool(paths(r, "unpinned")),
        "problems": [{"path": p.path, "kind": p.kind, "detail": p.detail} for p in r.problems],
    } for r in reports]
    kinds = Counter(p.kind for r in reports for p in r.problems)
    return {"fleet": fleet.metadata.name, "manifest": str(manifest_path),
            "content_hash": fleet.content_hash, "ok": all(r.ok for r in reports),
            "checked": checked,
            "totals": {"targets": len(reports), "failing": sum(not r.ok for r in reports),
                       "files_pinned": sum(r.pinned for r in reports),
                       "mismatched": kinds["mismatch"], "missing": kinds["missing"],
                       "extra": kinds["extra"], "unpinned": kinds["unpinned"]}}


def pin_check_lines(result: dict[str, Any]) -> list[str]:
    """``pin_check`` for people: a line per variant or adapter, then one per problem."""
    lines = [f"fleet {result['fleet']} ({result['content_hash'][:12]}): {result['manifest']}"]
    width = max([len(c["target"]) for c in result["checked"]] + [8])
    for c in result["checked"]:
        if c["api_priced"]:
            lines.append(f"{c['target']:<{width}}  api     API-priced: no weights to pin, "
                         "nothing checked")
        elif c["ok"]:
            lines.append(f"{c['target']:<{width}}  ok      {c['pinned']} pinned file(s) match, "
                         f"nothing else in {c['directory']}")
        else:
            lines.append(f"{c['target']:<{width}}  FAILED  {len(c['problems'])} problem(s) in "
                         f"{c['directory']}")
            lines += [f"    {p['kind']:<9} {p['path']}"
                      + ("" if p["detail"] in (p["kind"], "missing") else f": {p['detail']}")
                      for p in c["problems"]]
    t = result["totals"]
    verdict = "every pin holds" if result["ok"] else (
        f"{t['failing']} with problems: {t['mismatched']} mismatched, {t['missing']} missing, "
        f"{t['extra']} extra file(s), {t['unpinned']} without pins")
    lines.append(f"{t['targets']} variant(s)/adapter(s), {t['files_pinned']} pinned file(s): "
                 f"{verdict}")
    return lines


def fleet_rows(fleet: FleetManifest) -> list[dict[str, Any]]:
    """One row per tier variant: its pricing form (self-hosted or API-priced), the $/1k
    tokens it costs (input, prefix-cached input, output) and $ per request, GPUs and
    replicas (self-hosted only), and its pinned files (an API-priced variant has none)."""
    discount = fleet.spec.pricing.cached_input_discount
    rows = []
    for tier in fleet.tiers:
        for v in tier.variants:
            e = v.economics
            api = e.api_priced
            rows.append({
                "tier": tier.name,
                "rank": tier.rank,
                "model": tier.model,
                "variant": v.name + (" (default)" if v.name == tier.variant().name else ""),
                "stands_in_for": tier.stands_in_for,
                "pricing": "api" if api else "self-hosted",
                "gpus": None if api else e.gpus,
                "usd_per_gpu_hour": None if api else e.usd_per_gpu_hour,
                "usd_per_1k_input": round(e.usd_per_input_token * 1000, 7),
                "usd_per_1k_cached_input": round(e.usd_per_cached_input_token(discount) * 1000,
                                                 7),
                "usd_per_1k_output": round(e.usd_per_output_token * 1000, 7),
                "usd_per_request": e.usd_per_request,
                "replicas": None if api else e.replicas,
                "capacity": None if api else str(e.capacity_type),
                "pinned_files": API_PRICED_PINS if api else len(v.files),
                "adapters": ", ".join(a.name for a in v.adapters) or None,
            })
    return rows


def history_rows(store: Any) -> list[dict[str, Any]]:
    rows = []
    for a in store.activation_history():
        record = store.get_policy(a.version)
        rows.append({
            "activated_at": a.activated_at,
            "version": a.version,
            "previous": a.previous_version,
            "hash": record.content_hash[:12],
            "author": record.author,
            "actor": a.actor,
            "reason": a.reason,
            "proposal": a.proposal_id,
        })
    return rows


def audit_rows(store: Any, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "ts": e.ts,
            "actor": e.actor,
            "action": e.action,
            "subject": e.subject,
            "hash": e.entry_hash[:12],
        }
        for e in store.audit_entries(newest_first=True, limit=limit)
    ]


def read_metric_frames(state: StateDir, since: str | None, until: str | None):
    """The three telemetry tables of a day window, as DataFrames."""
    from telemetry.warehouse import read_table

    return tuple(
        read_table(state.telemetry_dir, table, start_day=since, end_day=until)
        for table in ("tasks", "attempts", "calls")
    )


def frame_records(frame) -> list[dict[str, Any]]:
    rows = frame.to_dict(orient="records")
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return v


def metrics_rows(
    state: StateDir, fleet: FleetManifest, by: list[str], since: str | None, until: str | None
) -> list[dict[str, Any]]:
    from economics.metrics import compute_metrics

    tasks, attempts, calls = read_metric_frames(state, since, until)
    if tasks.empty:
        return []
    settings = state.settings()
    frame = compute_metrics(tasks, attempts, calls, fleet, by=by, **metric_options(settings))
    return frame_records(frame)


#: What ``autopilot metrics`` shows by default (after the group keys); ``--columns`` more.
METRICS_KEY_COLUMNS = ("tasks", "green_prs", "fpy", "cost_per_green_pr", "spend_total",
                       "eval_share", "cache_hit_rate", "avg_attempts_per_task")


def metrics_columns(rows: list[dict[str, Any]], by: list[str], wanted: str | None) -> list[str]:
    """The columns of the metrics table: the group keys, then ``wanted`` (comma-separated
    names, ``all``, or None: ``METRICS_KEY_COLUMNS``). An unknown name is a ValueError
    naming it and what exists."""
    present = list(rows[0]) if rows else []
    if wanted is None:
        chosen = [c for c in METRICS_KEY_COLUMNS if c in present]
    elif wanted.strip().lower() == "all":
        chosen = [c for c in present if c not in by]
    else:
        chosen = [c.strip() for c in wanted.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in present]
        if unknown:
            raise ValueError(f"unknown column {unknown[0]!r}; columns: {', '.join(present)}")
    return [k for k in by if k in present] + [c for c in chosen if c not in by]


def metric_options(settings) -> dict[str, Any]:
    return {
        "default_verifier_cost_usd": settings.default_verifier_cost_usd,
        "runaway_attempts": settings.runaway_attempts,
    }


def finops_rows(
    state: StateDir, fleet: FleetManifest, since: str | None, until: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The register over the window and each budgeted team's spend per day.

    Team budgets come from the active policy's guardrails (they are a lever the autopilot
    may change); targets from ``autopilot.yaml``.
    """
    from economics.finops import budget_status, finops_register
    from economics.metrics import compute_metrics

    settings = state.settings()
    tasks, attempts, calls = read_metric_frames(state, since, until)
    options = metric_options(settings)
    whole = compute_metrics(tasks, attempts, calls, fleet, by=[], **options)
    register = [e.as_dict() for e in finops_register(whole, settings.finops_targets())]
    budgets: list[dict[str, Any]] = []
    team_budgets = _active_team_budgets(state)
    if team_budgets and not tasks.empty:
        by_team_day = compute_metrics(tasks, attempts, calls, fleet, by=["team", "day"], **options)
        budgets = [b.as_dict() for b in budget_status(by_team_day, team_budgets)]
    return [{k: _plain(v) for k, v in r.items()} for r in register], budgets


def _active_team_budgets(state: StateDir) -> dict[str, Any]:
    from store import Store

    store = Store.open(state.store_url())
    try:
        record = store.active_policy()
    finally:
        store.close()
    return {} if record is None else dict(record.policy.spec.guardrails.team_budgets)


def print_rows(rows: list[dict[str, Any]], *, title: str | None = None,
               columns: list[str] | None = None) -> None:
    from controlplane.console import emit_table as _print_table

    if rows:
        _print_table(rows, title=title, columns=[c for c in (columns or rows[0]) if c in rows[0]])
