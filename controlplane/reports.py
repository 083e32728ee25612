"""Change reports (one per proposal) and the quarterly report, in Markdown and standalone HTML.

``gather_*`` functions read the store and the telemetry warehouse (adapters); ``render_*``
functions are pure (data in, text out); ``charts`` draws PNGs with matplotlib's Agg backend.
The HTML embeds its charts as data URIs so it is one file a reviewer can open anywhere; the
Markdown links the PNGs written beside it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.prediction import Prediction

if TYPE_CHECKING:  # pragma: no cover

    from contracts.manifest import FleetManifest
    from controlplane.settings import StateDir
    from store import Store

__all__ = [
    "ChangeReport",
    "QuarterlyReport",
    "charts_for",
    "gather_change_report",
    "gather_quarterly_report",
    "quarter_bounds",
    "render_change_html",
    "render_change_markdown",
    "render_quarterly_html",
    "render_quarterly_markdown",
    "write_change_report",
    "write_quarterly_report",
]

_DAILY_COLUMNS = ("day", "tasks", "green_prs", "fpy", "cost_per_green_pr", "cache_hit_rate",
                  "eval_share", "spend_total")


@dataclass(frozen=True)
class ChangeReport:
    proposal: dict[str, Any]
    diff_lines: list[str]
    baseline_yaml: str
    candidate_yaml: str
    predicted: Prediction
    gates: list[dict[str, Any]]
    evidence: dict[str, Any]
    approval: dict[str, Any] | None
    history: list[dict[str, Any]]
    verification: list[dict[str, Any]]
    daily: list[dict[str, Any]]
    tier_mix: list[dict[str, Any]]
    change_day: str | None


@dataclass(frozen=True)
class QuarterlyReport:
    quarter: str
    start: str
    end: str
    changes: list[dict[str, Any]]
    daily: list[dict[str, Any]]
    register_by_month: list[dict[str, Any]]
    breaches: list[dict[str, Any]]
    totals: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- gather
def _daily(state: StateDir, fleet: FleetManifest, since: str | None = None,
           until: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from controlplane.views import read_metric_frames

    return _daily_of(state, fleet, *read_metric_frames(state, since, until))


def _daily_of(state: StateDir, fleet: FleetManifest, tasks: Any, attempts: Any, calls: Any
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from controlplane.views import frame_records, metric_options
    from economics.metrics import compute_metrics

    if tasks.empty:
        return [], []
    frame = compute_metrics(tasks, attempts, calls, fleet, by=["day"],
                            **metric_options(state.settings()))
    frame = frame.sort_values("day")
    shares = [c for c in frame.columns if c.startswith("tier_share_")]
    daily = frame_records(frame[[c for c in _DAILY_COLUMNS if c in frame.columns]])
    mix = frame_records(frame[["day", *shares]]) if shares else []
    return daily, mix


def first_day_served(task_versions: Iterable[tuple[str, str]], version: int) -> str | None:
    """The first telemetry day with a task served under ``version``: where the chart marks
    the change. Telemetry time, not the promotion's wall-clock time, since replayed or
    back-dated days (the demo's) are served after a promotion stamped later."""
    days = [day for day, v in task_versions if v == str(version)]
    return min(days) if days else None


def gather_change_report(state: StateDir, store: Store, fleet: FleetManifest,
                         proposal_id: str) -> ChangeReport:
    from policies.policy import describe_diff

    p = store.get_proposal(proposal_id)
    baseline = store.get_policy(p.baseline_version)
    candidate = store.get_policy(p.candidate_version)
    evidence: dict[str, Any] = {}
    if p.evidence_hash:
        evidence = store.get_evidence(p.evidence_hash).bundle
    approval = store.get_approval(proposal_id)
    entries = store.audit_entries(subject=proposal_id)
    history = [{"seq": e.seq, "ts": e.ts.isoformat(), "actor": e.actor, "action": e.action,
                "reason": e.payload.get("reason", ""), "entry_hash": e.entry_hash}
               for e in entries]
    verification = [{"ts": e.ts.isoformat(), **e.payload} for e in entries
                    if e.action == "verify.look"]
    change_day = None
    for a in store.activation_history():
        if a.proposal_id == proposal_id and a.version == p.candidate_version:
            change_day = a.activated_at.date().isoformat()
    from controlplane.views import read_metric_frames

    tasks, attempts, calls = read_metric_frames(state, None, None)
    versions = zip(tasks["day"].astype(str), tasks["policy_version"].astype(str), strict=True)
    change_day = first_day_served(versions, p.candidate_version) or change_day
    daily, mix = _daily_of(state, fleet, tasks, attempts, calls)
    return ChangeReport(
        proposal={
            "proposal_id": p.proposal_id, "lever": p.lever, "window": p.window,
            "state": p.state.value, "gate_verdict": p.gate_verdict.value if p.gate_verdict
            else None, "candidate_version": p.candidate_version,
            "baseline_version": p.baseline_version, "candidate_hash": p.candidate_hash,
            "baseline_hash": p.baseline_hash, "evidence_hash": p.evidence_hash,
            "created_by": p.created_by, "created_at": p.created_at.isoformat(),
            "description": candidate.policy.metadata.description,
        },
        diff_lines=describe_diff(baseline.policy, candidate.policy),
        baseline_yaml=baseline.yaml_text,
        candidate_yaml=candidate.yaml_text,
        predicted=p.predicted,
        gates=_gate_rows(evidence),
        evidence=evidence,
        approval=None if approval is None else {
            "approver": approval.approver, "decision": approval.decision.value,
            "reason": approval.reason, "decided_at": approval.decided_at.isoformat()},
        history=history,
        verification=verification,
        daily=daily,
        tier_mix=mix,
        change_day=change_day,
    )


def _gate_rows(evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per gate of a bundle (``gates.evidence.SCHEMA``; none without a bundle)."""
    return [{"name": g["name"], "phase": g["phase"], "message": g["message"]}
            for g in evidence.get("gates") or []]


def quarter_bounds(quarter: str) -> tuple[date, date]:
    """``2026Q4`` -> (2026-10-01, 2026-12-31)."""
    text = quarter.strip().upper()
    if len(text) != 6 or text[4] != "Q" or text[5] not in "1234" or not text[:4].isdigit():
        raise ValueError(f"quarter must look like 2026Q4 (got {quarter!r})")
    year, q = int(text[:4]), int(text[5])
    start = date(year, 3 * q - 2, 1)
    end = date(year + (q == 4), 1 if q == 4 else 3 * q + 1, 1)
    return start, date.fromordinal(end.toordinal() - 1)


def gather_quarterly_report(state: StateDir, store: Store, fleet: FleetManifest,
                            quarter: str) -> QuarterlyReport:
    from controlplane.views import metric_options, read_metric_frames
    from economics.finops import finops_register
    from economics.metrics import compute_metrics

    start, end = quarter_bounds(quarter)
    changes = []
    for p in store.list_proposals():
        created = p.created_at.date()
        if not (start <= created <= end):
            continue
        looks = [e.payload for e in store.audit_entries(subject=p.proposal_id, action="verify.look")]
        realised = looks[-1].get("stats", {}).get("rel_delta") if looks else None
        changes.append({
            "proposal_id": p.proposal_id, "lever": p.lever, "state": p.state.value,
            "gate_verdict": p.gate_verdict.value if p.gate_verdict else None,
            "created": created.isoformat(),
            "predicted_rel_delta": p.predicted.cost_per_green_pr_rel_delta,
            "realised_rel_delta": realised,
            "candidate_version": p.candidate_version,
        })
    daily, _ = _daily(state, fleet, start.isoformat(), end.isoformat())
    tasks, attempts, calls = read_metric_frames(state, start.isoformat(), end.isoformat())
    register_rows: list[dict[str, Any]] = []
    breaches: list[dict[str, Any]] = []
    if not tasks.empty:
        tasks = tasks.assign(month=tasks["day"].str.slice(0, 7))
        targets = state.settings().finops_targets()
        for month in sorted(tasks["month"].unique()):
            days = set(tasks.loc[tasks["month"] == month, "day"])
            row = compute_metrics(tasks[tasks["month"] == month].drop(columns="month"),
                                  attempts[attempts["day"].isin(days)],
                                  calls[calls["day"].isin(days)], fleet, by=[],
                                  **metric_options(state.settings()))
            entries = finops_register(row, targets)
            register_rows.append({"month": month,
                                  **{e.id: str(e.status) for e in entries}})
            breaches += [{"month": month, "id": e.id, "message": e.message}
                         for e in entries if str(e.status) == "BREACH"]
    promoted = [c for c in changes if c["state"] in ("active", "verified", "rolled_back")]
    totals = {
        "proposals": len(changes),
        "promoted": len(promoted),
        "rolled_back": sum(c["state"] == "rolled_back" for c in changes),
        "verified": sum(c["state"] == "verified" for c in changes),
        "tasks": int(sum(d.get("tasks") or 0 for d in daily)),
        "spend_usd": float(sum(d.get("spend_total") or 0.0 for d in daily)),
    }
    return QuarterlyReport(quarter.upper(), start.isoformat(), end.isoformat(), changes, daily,
                           register_rows, breaches, totals)


# -------------------------------------------------------------------------------- charts
def charts_for(daily: Sequence[Mapping[str, Any]], tier_mix: Sequence[Mapping[str, Any]],
               change_day: str | None) -> dict[str, bytes]:
    """PNG charts: cost per Green PR (change marked), FPY, tier mix, cache hit rate."""
    if not daily:
        return {}
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d["day"] for d in daily]
    out: dict[str, bytes] = {}

    def finish(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out[name] = buf.getvalue()

    def mark(ax) -> None:
        if change_day and change_day in days:
            ax.axvline(days.index(change_day) - 0.5, color="tab:red", linestyle="--",
                       label=f"change ({change_day})")
            ax.legend(loc="best", fontsize=8)

    for name, column, label in (("cost_per_green_pr", "cost_per_green_pr", "$ per Green PR"),
                                ("fpy", "fpy", "first-pass yield"),
                                ("cache_hit_rate", "cache_hit_rate", "cache hit rate")):
        fig, ax = plt.subplots(figsize=(6, 2.6))
        values = [_num(d.get(column)) for d in daily]
        ax.plot(range(len(days)), values, marker="o")
        ax.set_xticks(range(len(days)), days, rotation=30, fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        mark(ax)
        finish(fig, name)
    if tier_mix:
        tiers = [k for k in tier_mix[0] if k.startswith("tier_share_")]
        fig, ax = plt.subplots(figsize=(6, 2.6))
        bottom = [0.0] * len(tier_mix)
        for col in tiers:
            vals = [_num(r.get(col)) or 0.0 for r in tier_mix]
            ax.bar(range(len(tier_mix)), vals, bottom=bottom, label=col.removeprefix("tier_share_"))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(tier_mix)), [r["day"] for r in tier_mix], rotation=30, fontsize=7)
        ax.set_ylabel("share of serve attempts")
        mark(ax)
        ax.legend(fontsize=7, loc="upper right")
        finish(fig, "tier_mix")
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------------------- render
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "_none_\n"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns)
                   + " |\n" for r in rows)
    return head + body


def _prediction_rows(predicted: Prediction) -> list[dict[str, Any]]:
    """Each predicted figure with its interval beside it, then risk and support."""
    rows = [{"figure": name, "value": point,
             "interval": None if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"}
            for name, point, ci in predicted.figures()]
    rows.append({"figure": "risk", "value": predicted.risk, "interval": None})
    if predicted.support is not None:
        rows.append({"figure": "support", "value": predicted.support, "interval": None})
    return rows


_CHART_TITLES = {"cost_per_green_pr": "Cost per Green PR", "fpy": "First-pass yield",
                 "tier_mix": "Tier mix", "cache_hit_rate": "Cache hit rate"}


def render_change_markdown(r: ChangeReport, chart_files: Mapping[str, str] | None = None) -> str:
    p = r.proposal
    lines = [
        f"# Change report {p['proposal_id']}: {p['lever']}",
        "",
        f"Policy v{p['baseline_version']} (`{p['baseline_hash'][:12]}`) -> "
        f"v{p['candidate_version']} (`{p['candidate_hash'][:12]}`), telemetry window "
        f"{p['window']}. State: **{p['state']}**; gates: **{p['gate_verdict'] or '-'}**.",
        "",
        "## What changed",
        *([f"- {line}" for line in r.diff_lines] or ["- (no change in spec)"]),
        "",
        "## Why: predicted impact",
        _md_table(_prediction_rows(r.predicted), ["figure", "value", "interval"]),
        "## Gates",
        _md_table(r.gates, ["name", "phase", "message"]),
        "## Evidence",
        f"- bundle sha256: `{p['evidence_hash'] or '-'}`",
        *[f"- {k}: `{r.evidence[k]}`" for k in ("suite_hash", "fleet_manifest_hash",
                                                 "candidate_policy_hash", "baseline_policy_hash")
          if k in r.evidence],
        "",
        "## Approval",
        (f"- {r.approval['decision']} by **{r.approval['approver']}** at "
         f"{r.approval['decided_at']}: {r.approval['reason']}" if r.approval
         else "- not decided yet"),
        "",
        "## Realised against predicted",
        _md_table([{"ts": v.get("ts"), "outcome": v.get("outcome"), "message": v.get("message")}
                   for v in r.verification], ["ts", "outcome", "message"])
        if r.verification else "_not verified yet_\n",
        "## Charts",
        *[f"![{_CHART_TITLES.get(name, name)}]({path})" for name, path in
          (chart_files or {}).items()],
        "",
        "## Daily figures",
        _md_table(r.daily, list(_DAILY_COLUMNS)),
        "## Audit trail",
        _md_table(r.history, ["seq", "ts", "actor", "action", "reason"]),
        "## Candidate policy",
        "```yaml", r.candidate_yaml.rstrip(), "```",
        "",
    ]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
        "padding:4px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}"
        ".PASSED{color:#176f2c;font-weight:600}.FAILED,.ERROR{color:#b00020;font-weight:600}"
        ".INCONCLUSIVE{color:#a06000;font-weight:600}pre{background:#f6f6f6;padding:1em;"
        "overflow:auto;font-size:12px}img{max-width:100%}")


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = html.escape(_fmt(row.get(c)))
            cls = f' class="{text}"' if c == "phase" else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    title = html.escape(_CHART_TITLES.get(name, name))
    return f'<h3>{title}</h3><img alt="{title}" src="data:image/png;base64,{data}">'


def render_change_html(r: ChangeReport, charts: Mapping[str, bytes]) -> str:
    p = r.proposal
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Change {esc(p['proposal_id'])}"
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>Change report {esc(p['proposal_id'])}: {esc(p['lever'])}</h1>",
        f"<p>Policy v{p['baseline_version']} (<code>{esc(p['baseline_hash'][:12])}</code>) &rarr; "
        f"v{p['candidate_version']} (<code>{esc(p['candidate_hash'][:12])}</code>), window "
        f"{esc(p['window'])}. State: <b>{esc(p['state'])}</b>; gates: "
        f"<b class='{esc(str(p['gate_verdict']))}'>{esc(str(p['gate_verdict'] or '-'))}</b>.</p>",
        "<h2>What changed</h2><ul>",
        *[f"<li>{esc(line)}</li>" for line in r.diff_lines or ["(no change in spec)"]],
        "</ul><h2>Why: predicted impact</h2>",
        _html_table(_prediction_rows(r.predicted), ["figure", "value", "interval"]),
        "<h2>Gates</h2>", _html_table(r.gates, ["name", "phase", "message"]),
        "<h2>Evidence</h2>",
        f"<p>bundle sha256: <code>{esc(p['evidence_hash'] or '-')}</code></p>",
        "<h2>Approval</h2>",
        (f"<p>{esc(r.approval['decision'])} by <b>{esc(r.approval['approver'])}</b> at "
         f"{esc(r.approval['decided_at'])}: {esc(r.approval['reason'])}</p>" if r.approval
         else "<p>not decided yet</p>"),
        "<h2>Realised against predicted</h2>",
        _html_table([{"ts": v.get("ts"), "outcome": v.get("outcome"),
                      "message": v.get("message")} for v in r.verification],
                    ["ts", "outcome", "message"]),
        "<h2>Charts</h2>", *[_img(n, png) for n, png in charts.items()],
        "<h2>Daily figures</h2>", _html_table(r.daily, list(_DAILY_COLUMNS)),
        "<h2>Audit trail</h2>", _html_table(r.history, ["seq", "ts", "actor", "action", "reason"]),
        "<h2>Candidate policy</h2>", f"<pre>{esc(r.candidate_yaml)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def render_quarterly_markdown(q: QuarterlyReport, chart_files: Mapping[str, str] | None = None) -> str:
    t = q.totals
    return "\n".join([
        f"# Quarterly review {q.quarter} ({q.start} to {q.end})",
        "",
        f"{t.get('proposals', 0)} proposals, {t.get('promoted', 0)} promoted, "
        f"{t.get('verified', 0)} verified, {t.get('rolled_back', 0)} rolled back; "
        f"{t.get('tasks', 0)} tasks and ${t.get('spend_usd', 0.0):.2f} of spend in telemetry.",
        "",
        "## Changes",
        _md_table(q.changes, ["proposal_id", "lever", "state", "gate_verdict", "created",
                              "predicted_rel_delta", "realised_rel_delta"]),
        "## Charts",
        *[f"![{_CHART_TITLES.get(n, n)}]({path})" for n, path in (chart_files or {}).items()],
        "",
        "## FinOps register by month",
        _md_table(q.register_by_month, ["month", *[f"FIN-0{i}" for i in range(1, 10)]]),
        "## Breaches",
        _md_table(q.breaches, ["month", "id", "message"]),
        "## Daily figures",
        _md_table(q.daily, list(_DAILY_COLUMNS)),
    ])


def render_quarterly_html(q: QuarterlyReport, charts: Mapping[str, bytes]) -> str:
    esc = html.escape
    t = q.totals
    return "\n".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(q.quarter)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Quarterly review {esc(q.quarter)}</h1><p>{esc(q.start)} to {esc(q.end)}: "
        f"{t.get('proposals', 0)} proposals, {t.get('promoted', 0)} promoted, "
        f"{t.get('verified', 0)} verified, {t.get('rolled_back', 0)} rolled back.</p>",
        "<h2>Changes</h2>",
        _html_table(q.changes, ["proposal_id", "lever", "state", "gate_verdict", "created",
                                "predicted_rel_delta", "realised_rel_delta"]),
        "<h2>Charts</h2>", *[_img(n, png) for n, png in charts.items()],
        "<h2>FinOps register by month</h2>",
        _html_table(q.register_by_month, ["month", *[f"FIN-0{i}" for i in range(1, 10)]]),
        "<h2>Breaches</h2>", _html_table(q.breaches, ["month", "id", "message"]),
        "<h2>Daily figures</h2>", _html_table(q.daily, list(_DAILY_COLUMNS)),
        "</body></html>",
    ])


# -------------------------------------------------------------------------------- write
def _write(folder: Path, stem: str, markdown_fn, html_fn, charts: Mapping[str, bytes]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    chart_files = {}
    for name, png in charts.items():
        path = folder / f"{stem}-{name}.png"
        path.write_bytes(png)
        chart_files[name] = path.name
    md = folder / f"{stem}.md"
    md.write_text(markdown_fn(chart_files), encoding="utf-8")
    page = folder / f"{stem}.html"
    page.write_text(html_fn(charts), encoding="utf-8")
    return {"markdown": str(md), "html": str(page), "charts": str(len(chart_files))}


def write_change_report(state: StateDir, store: Store, fleet: FleetManifest,
                        proposal_id: str) -> dict[str, str]:
    report = gather_change_report(state, store, fleet, proposal_id)
    charts = charts_for(report.daily, report.tier_mix, report.change_day)
    return _write(state.reports_dir / "changes", proposal_id,
                  lambda files: render_change_markdown(report, files),
                  lambda c: render_change_html(report, c), charts)


def write_quarterly_report(state: StateDir, store: Store, fleet: FleetManifest,
                           quarter: str) -> dict[str, str]:
    report = gather_quarterly_report(state, store, fleet, quarter)
    daily_mix: list[dict[str, Any]] = []
    charts = charts_for(report.daily, daily_mix, None)
    return _write(state.reports_dir / "quarterly", report.quarter,
                  lambda files: render_quarterly_markdown(report, files),
                  lambda c: render_quarterly_html(report, c), charts)

