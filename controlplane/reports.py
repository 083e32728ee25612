"""Change reports (one per proposal) and the quarterly report, in Markdown and standalone HTML.

``gather_*`` functions read the store and the telemetry warehouse (adapters); ``render_*``
functions are pure (data in, text out) and fill the Jinja2 templates in
``controlplane/templates/``; ``charts`` draws PNGs with matplotlib's Agg backend (units on
every axis, zero on every value axis, alt text with the figures drawn). The HTML embeds its
charts as data URIs so it is one file a reviewer can open anywhere; the Markdown links the
PNGs written beside it.

One evidence hash everywhere: a change report names the evidence bundle by the sha256 of its
stored text (the store's key, the file name under ``reports/evidence/`` and the ``gate.run``
audit entry's ``evidence_sha256``); the bundle's own content hash (``bundle_hash``) is shown
once, labelled as such.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.prediction import Prediction

if TYPE_CHECKING:  # pragma: no cover

    from contracts.manifest import FleetManifest
    from controlplane.settings import StateDir
    from store import Store

__all__ = [
    "ChangeReport",
    "Chart",
    "QuarterlyReport",
    "change_charts",
    "charts_for",
    "first_day_served",
    "gather_change_report",
    "gather_quarterly_report",
    "headline",
    "quarter_bounds",
    "quarterly_charts",
    "render_change_html",
    "render_change_markdown",
    "render_quarterly_html",
    "render_quarterly_markdown",
    "write_change_report",
    "write_quarterly_report",
]

_DAILY_COLUMNS = ("day", "tasks", "green_prs", "fpy", "cost_per_green_pr", "cache_hit_rate",
                  "eval_share", "spend_total", "spend_gate", "spend_eval")

# Each predicted figure: the name a person reads and its unit ("rel": a relative change,
# "pp": a change of a rate in percentage points, "usd": dollars, "rate": a share).
FIGURES: dict[str, tuple[str, str]] = {
    "cost_per_green_pr_rel_delta": ("Cost per Green PR, change", "rel"),
    "green_prs_rel_delta": ("Green PRs, change", "rel"),
    "fpy_delta": ("First-pass yield, change", "pp"),
    "cost_per_green_pr": ("Cost per Green PR under the candidate", "usd"),
    "fpy": ("First-pass yield under the candidate", "rate"),
    "active_cost_per_green_pr": ("Cost per Green PR under the active policy (same replay)", "usd"),
    "active_fpy": ("First-pass yield under the active policy (same replay)", "rate"),
}

REGISTER_UNITS = {"FIN-01": "usd", "FIN-02": "rate", "FIN-03": "rate", "FIN-04": "rate",
                  "FIN-05": "rate", "FIN-06": "rate", "FIN-07": "rate", "FIN-08": "rate",
                  "FIN-09": "rate"}


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    alt: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


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
    looks: list[dict[str, Any]] = field(default_factory=list)
    canary: dict[str, Any] | None = None
    evidence_info: dict[str, Any] = field(default_factory=dict)
    audit_head: dict[str, Any] = field(default_factory=dict)
    generated_at: str = ""


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
    previous: dict[str, Any] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    teams: list[dict[str, Any]] = field(default_factory=list)
    repos: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    forecast: list[dict[str, Any]] = field(default_factory=list)
    tier_mix: list[dict[str, Any]] = field(default_factory=list)
    generated_at: str = ""
    audit_head: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ numbers
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt(v: Any, unit: str = "") -> str:
    """One figure as a person reads it: ``rel`` -> -2.8%, ``pp`` -> +1.2 pp, ``usd`` ->
    $0.2540, ``rate`` -> 91.0%; anything else as short text."""
    if unit in ("rel", "pp", "usd", "rate"):
        x = _num(v)
        if x is None:
            return "-"
        if unit == "rel":
            return f"{x * 100:+.1f}%"
        if unit == "pp":
            return f"{x * 100:+.1f} pp"
        if unit == "rate":
            return f"{x * 100:.1f}%"
        sign, x = ("-" if x < 0 else ""), abs(x)
        return sign + (f"${x:,.2f}" if x >= 100 else f"${x:.4f}" if x < 1 else f"${x:,.3f}")
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v)


def fmt_interval(ci: Sequence[Any] | None, unit: str) -> str:
    if not ci or _num(ci[0]) is None or _num(ci[1]) is None:
        return "-"
    return f"{fmt(ci[0], unit)} to {fmt(ci[1], unit)}"


def _drop(point: float, ci: Sequence[float] | None) -> str:
    """A predicted change said as a size of drop (or rise): 19.3% (18.0% to 20.4%)."""
    size = f"{abs(point) * 100:.1f}%"
    if not ci or _num(ci[0]) is None or _num(ci[1]) is None:
        return size
    lo, hi = float(ci[0]), float(ci[1])
    if (lo <= 0 and hi <= 0 and point <= 0) or (lo >= 0 and hi >= 0 and point >= 0):
        a, b = sorted((abs(lo), abs(hi)))
        return f"{size} ({a * 100:.1f}% to {b * 100:.1f}%)"
    return f"{size} ({fmt(lo, 'rel')} to {fmt(hi, 'rel')})"


def headline(version: int, predicted: Prediction, look: Mapping[str, Any] | None) -> dict[str, Any]:
    """The change report's first sentence and its verdict (inside/outside/none)."""
    exp = predicted.exploration
    if exp is not None:
        within = "within" if exp.within_budget else "OVER"
        text = (f"v{version} explores {', '.join(exp.tiers) or '-'} for "
                f"{', '.join(exp.families) or '-'}: {fmt(exp.usd_per_day, 'usd')}/day against "
                f"a budget of {fmt(exp.budget_usd_per_day, 'usd')}/day ({within} budget)")
        return {"text": text, "verdict": "within" if exp.within_budget else "outside"}
    point = predicted.cost_per_green_pr_rel_delta
    ci = predicted.cost_per_green_pr_rel_delta_ci
    if point is None:
        return {"text": f"v{version} predicted no change of cost per Green PR", "verdict": None}
    verb = "lower" if point <= 0 else "raise"
    realised = None if look is None else _num(look.get("realised"))
    if realised is None:
        return {"text": f"v{version} is predicted to {verb} cost per Green PR by "
                        f"{_drop(point, ci)}; not realised yet", "verdict": None}
    rverb = "lowered" if realised <= 0 else "raised"
    rci = look.get("realised_ci") if look else None
    rtext = f"{abs(realised) * 100:.1f}%"
    if rci and _num(rci[0]) is not None and _num(rci[1]) is not None:
        rtext += f" ({fmt(rci[0], 'rel')} to {fmt(rci[1], 'rel')})"
    predicted_text = f"predicted {_drop(point, ci)}" + ("" if point <= 0 else " rise")
    if ci is None:
        verdict, tail = None, "no predicted interval to compare"
    elif ci[0] <= realised <= ci[1]:
        verdict, tail = "inside", "inside the predicted interval"
    else:
        verdict, tail = "outside", "outside the predicted interval"
    return {"text": f"v{version} {rverb} cost per Green PR by {rtext}, {predicted_text}: {tail}",
            "verdict": verdict}


# ------------------------------------------------------------------------------- gather
def _daily(state: StateDir, fleet: FleetManifest, since: str | None = None,
           until: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from controlplane.views import read_metric_frames

    return _daily_of(state, fleet, *read_metric_frames(state, since, until))


def _daily_of(state: StateDir, fleet: FleetManifest, tasks: Any, attempts: Any, calls: Any
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from controlplane.views import frame_records, metric_options
    from economics.metrics import compute_metrics

    if tasks.empty and attempts.empty and calls.empty:
        return [], []
    frame = compute_metrics(tasks, attempts, calls, fleet, by=["day"],
                            **metric_options(state.settings()))
    frame = frame.sort_values("day")
    shares = [c for c in frame.columns if c.startswith("tier_share_")]
    daily = frame_records(frame[[c for c in _DAILY_COLUMNS if c in frame.columns]])
    for d in daily:
        d["kind"] = _day_kind(d)
    mix = frame_records(frame[["day", *shares]]) if shares else []
    return daily, mix


def _day_kind(d: Mapping[str, Any]) -> str:
    """``gate/eval`` for a day of gate or eval traffic (no served task, or most of its spend
    on gates and evals), else ``serve``: such days are not the fleet's cost per Green PR."""
    total = _num(d.get("spend_total")) or 0.0
    other = (_num(d.get("spend_gate")) or 0.0) + (_num(d.get("spend_eval")) or 0.0)
    if not d.get("tasks") or (total > 0 and other > total / 2):
        return "gate/eval"
    return "serve"


def first_day_served(task_versions: Iterable[tuple[str, str]], version: int) -> str | None:
    """The first telemetry day with a task served under ``version``: where the chart marks
    the change. Telemetry time, not the promotion's wall-clock time, since replayed or
    back-dated days (the demo's) are served after a promotion stamped later."""
    days = [day for day, v in task_versions if v == str(version)]
    return min(days) if days else None


def _looks(store: Store, proposal_id: str, entries: Sequence[Any]) -> list[dict[str, Any]]:
    """Every realised look at a proposal (canary looks first, then verify looks), with the
    calibration record's interval where it has one."""
    records = {r.look: r for r in store.calibration_records(proposal_id=proposal_id)}
    out: list[dict[str, Any]] = []
    for kind, action in (("canary", "rollout.look"), ("verify", "verify.look")):
        n = 0
        for e in entries:
            if e.action != action:
                continue
            n += 1
            stats = e.payload.get("stats") or {}
            realised, ci = _num(stats.get("rel_delta")), stats.get("rel_delta_ci")
            rec = records.get(n) if kind == "verify" else None
            if rec is not None:
                realised = rec.realised
                if rec.realised_low is not None and rec.realised_high is not None:
                    ci = [rec.realised_low, rec.realised_high]
            out.append({"kind": kind, "look": n, "ts": e.ts.isoformat(timespec="seconds"),
                        "outcome": e.payload.get("outcome"), "action": e.payload.get("action"),
                        "share": e.payload.get("share"), "message": e.payload.get("message", ""),
                        "realised": realised, "realised_ci": ci if ci and None not in ci
                        else None})
    return out


def _canary(store: Store, proposal_id: str, entries: Sequence[Any]) -> dict[str, Any] | None:
    rollout = store.get_rollout(proposal_id)
    steps = [{"ts": e.ts.isoformat(timespec="seconds"), "action": e.action,
              "share": e.payload.get("share"), "step": e.payload.get("step"),
              "decision": e.payload.get("action") or e.payload.get("outcome") or "",
              "message": e.payload.get("message") or e.payload.get("reason") or ""}
             for e in entries if e.action in ("proposal.canary", "rollout.advance",
                                              "rollout.look", "rollout.complete",
                                              "rollout.abort")]
    if rollout is None and not steps:
        return None
    return {"rollout": None if rollout is None else rollout.as_dict(), "steps": steps}


def _evidence_info(state: StateDir, store: Store, proposal_id: str,
                   evidence_hash: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle and what the report says of it: one sha256 (the stored text's), the file
    under ``reports/evidence/`` (written from the store when missing: the same bytes), and
    whether every ``gate.run`` entry of the proposal names that same hash."""
    from contracts.files import atomic_write_text

    if not evidence_hash:
        return {}, {"sha256": None, "path": None, "gate_runs": [], "consistent": True}
    record = store.get_evidence(evidence_hash)  # re-hashed on the way out
    bundle = record.bundle
    path = Path(state.reports_dir) / "evidence" / f"{evidence_hash}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, record.json_text)
    runs = [{"seq": e.seq, "evidence_sha256": e.payload.get("evidence_sha256"),
             "bundle_hash": e.payload.get("bundle_hash"), "overall": e.payload.get("overall")}
            for e in store.audit_entries(action="gate.run")
            if e.payload.get("proposal_id") == proposal_id and not e.payload.get("dry_run")]
    consistent = all(r["evidence_sha256"] == evidence_hash for r in runs)
    return bundle, {"sha256": evidence_hash, "bundle_hash": bundle.get("bundle_hash"),
                    "path": str(path), "link": f"../evidence/{path.name}", "gate_runs": runs,
                    "consistent": consistent}


def _audit_head(store: Store) -> dict[str, Any]:
    """The audit chain head when the report is made (an anchor a reader can hand to
    ``autopilot audit verify --anchor HASH@SEQ``) and whether the log verified: chain, the
    state tables replayed, the store's anchors."""
    check = store.verify_audit()
    last = store.audit_entries(newest_first=True, limit=1)
    head = last[0] if last else None
    return {"ok": check.ok, "entries": check.entries_checked,
            "seq": None if head is None else head.seq,
            "entry_hash": None if head is None else head.entry_hash,
            "ts": None if head is None else head.ts.isoformat(),
            "anchor": None if head is None else f"{head.entry_hash}@{head.seq}",
            "first_bad_seq": check.first_bad_seq, "reason": check.reason,
            "problems": len(check.problems), "anchors_checked": check.anchors_checked}


def _detail(e: Any) -> str:
    p = e.payload
    if e.action == "gate.run":
        return f"evidence sha256 {str(p.get('evidence_sha256'))[:12]}: {p.get('overall')}"
    if e.action == "evidence.put":
        return f"evidence sha256 {str(p.get('sha256'))[:12]} stored"
    if e.action in ("rollout.look", "rollout.advance", "proposal.canary"):
        share = _num(p.get("share"))
        tail = f" at {share * 100:.0f}% of tasks" if share is not None else ""
        return f"{p.get('action') or p.get('outcome') or ''}{tail} {p.get('message', '')}".strip()
    if e.action == "verify.look":
        return str(p.get("message", ""))
    return str(p.get("reason", ""))


def gather_change_report(state: StateDir, store: Store, fleet: FleetManifest,
                         proposal_id: str) -> ChangeReport:
    from controlplane.views import read_metric_frames
    from policies.policy import describe_diff

    p = store.get_proposal(proposal_id)
    baseline = store.get_policy(p.baseline_version)
    candidate = store.get_policy(p.candidate_version)
    evidence, evidence_info = _evidence_info(state, store, proposal_id, p.evidence_hash)
    approval = store.get_approval(proposal_id)
    entries = store.audit_entries(subject=proposal_id)
    gate_runs = {r["seq"] for r in evidence_info.get("gate_runs", [])}
    trail = sorted([*entries, *(e for e in store.audit_entries(action="gate.run")
                                if e.seq in gate_runs)], key=lambda e: e.seq)
    history = [{"seq": e.seq, "ts": e.ts.isoformat(timespec="seconds"), "actor": e.actor,
                "action": e.action, "reason": e.payload.get("reason", ""),
                "detail": _detail(e), "entry_hash": e.entry_hash} for e in trail]
    verification = [{"ts": e.ts.isoformat(), **e.payload} for e in entries
                    if e.action == "verify.look"]
    change_day = None
    for a in store.activation_history():
        if a.proposal_id == proposal_id and a.version == p.candidate_version:
            change_day = a.activated_at.date().isoformat()
    tasks, attempts, calls = read_metric_frames(state, None, None)
    if not tasks.empty:
        versions = zip(tasks["day"].astype(str), tasks["policy_version"].astype(str),
                       strict=True)
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
        looks=_looks(store, proposal_id, entries),
        canary=_canary(store, proposal_id, entries),
        evidence_info=evidence_info,
        audit_head=_audit_head(store),
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
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


def _previous_quarter(quarter: str) -> str:
    year, q = int(quarter[:4]), int(quarter[5])
    return f"{year - 1}Q4" if q == 1 else f"{year}Q{q - 1}"


def _totals_of(state: StateDir, fleet: FleetManifest, frames: tuple[Any, Any, Any]
               ) -> dict[str, Any]:
    from controlplane.views import metric_options
    from economics.metrics import compute_metrics

    tasks, attempts, calls = frames
    if tasks.empty and attempts.empty and calls.empty:
        return {"tasks": 0, "green_prs": 0, "spend_usd": 0.0, "cost_per_green_pr": None,
                "fpy": None}
    row = compute_metrics(tasks, attempts, calls, fleet, by=[],
                          **metric_options(state.settings())).iloc[0]
    return {"tasks": int(row["tasks"]), "green_prs": int(row["green_prs"]),
            "spend_usd": float(row["spend_total"]),
            "cost_per_green_pr": _num(row["cost_per_green_pr"]), "fpy": _num(row["fpy"])}


def _served_by(frames: tuple[Any, Any, Any], version: int) -> tuple[Any, Any, Any]:
    tasks, attempts, calls = frames
    if tasks.empty:
        return frames
    ids = set(tasks.loc[tasks["policy_version"].astype(str) == str(version), "task_id"])
    return (tasks[tasks["task_id"].isin(ids)], attempts[attempts["task_id"].isin(ids)],
            calls[calls["task_id"].isin(ids)])


def _saved(spend: float, rel: float | None) -> float | None:
    """Dollars the candidate's Green PRs would have cost more at the baseline's cost per
    Green PR: spend / (1 + rel) - spend (positive: saved)."""
    if rel is None or rel <= -1:
        return None
    return spend / (1 + rel) - spend


def gather_quarterly_report(state: StateDir, store: Store, fleet: FleetManifest,
                            quarter: str) -> QuarterlyReport:
    from controlplane.views import frame_records, metric_options, read_metric_frames
    from economics.finops import finops_register
    from economics.metrics import compute_metrics

    quarter = quarter.strip().upper()
    start, end = quarter_bounds(quarter)
    p_start, p_end = quarter_bounds(_previous_quarter(quarter))
    frames = read_metric_frames(state, start.isoformat(), end.isoformat())
    tasks, attempts, calls = frames
    options = metric_options(state.settings())
    records = store.calibration_records()
    changes, calibration = [], []
    for p in store.list_proposals():
        created = p.created_at.date()
        if not (start <= created <= end):
            continue
        entries = store.audit_entries(subject=p.proposal_id)
        looks = [lk for lk in _looks(store, p.proposal_id, entries) if lk["realised"] is not None]
        last = looks[-1] if looks else None
        rel = None if last is None else last["realised"]
        rci = None if last is None else last["realised_ci"]
        cand = _totals_of(state, fleet, _served_by(frames, p.candidate_version)) \
            if p.state.value in ("active", "verified", "rolled_back", "canary") else None
        spend = cand["spend_usd"] if cand else 0.0
        saved = _saved(spend, rel) if cand else None
        saved_ci = None
        if cand and rci:
            lo, hi = _saved(spend, rci[1]), _saved(spend, rci[0])
            saved_ci = None if lo is None or hi is None else [lo, hi]
        pred = p.predicted
        first_day = None
        if not tasks.empty:
            first_day = first_day_served(zip(tasks["day"].astype(str),
                                             tasks["policy_version"].astype(str), strict=True),
                                         p.candidate_version)
        changes.append({
            "proposal_id": p.proposal_id, "lever": p.lever, "state": p.state.value,
            "first_day_served": first_day,
            "gate_verdict": p.gate_verdict.value if p.gate_verdict else None,
            "created": created.isoformat(), "candidate_version": p.candidate_version,
            "predicted_rel_delta": pred.cost_per_green_pr_rel_delta,
            "predicted_ci": pred.cost_per_green_pr_rel_delta_ci,
            "realised_rel_delta": rel, "realised_ci": rci,
            "inside": None if rel is None or pred.cost_per_green_pr_rel_delta_ci is None
            else bool(pred.cost_per_green_pr_rel_delta_ci[0] <= rel
                      <= pred.cost_per_green_pr_rel_delta_ci[1]),
            "candidate_spend_usd": spend if cand else None, "saved_usd": saved,
            "saved_ci": saved_ci, "link": f"../changes/{p.proposal_id}.html",
            "link_md": f"../changes/{p.proposal_id}.md",
        })
        own = [r for r in records if r.proposal_id == p.proposal_id]
        if own:
            calibration.append(own[-1].as_dict())
    daily, mix = _daily_of(state, fleet, *frames)
    register_rows: list[dict[str, Any]] = []
    breaches: list[dict[str, Any]] = []
    if not tasks.empty:
        tasks_m = tasks.assign(month=tasks["day"].str.slice(0, 7))
        targets = state.settings().finops_targets()
        for month in sorted(tasks_m["month"].unique()):
            days = set(tasks_m.loc[tasks_m["month"] == month, "day"])
            row = compute_metrics(tasks_m[tasks_m["month"] == month].drop(columns="month"),
                                  attempts[attempts["day"].isin(days)],
                                  calls[calls["day"].isin(days)], fleet, by=[], **options)
            found = finops_register(row, targets)
            register_rows.append({"month": month, **{e.id: str(e.status) for e in found},
                                  "entries": [e.as_dict() for e in found]})
            breaches += [{"month": month, "id": e.id, "message": e.message}
                         for e in found if str(e.status) == "BREACH"]
    teams, repos = [], []
    if not tasks.empty:
        budgets = _team_budgets(store)
        n_days = len({d["day"] for d in daily if d["kind"] == "serve"}) or 1
        for r in frame_records(compute_metrics(tasks, attempts, calls, fleet, by=["team"],
                                               **options)):
            budget = budgets.get(str(r["team"]))
            spend = float(r.get("spend_total") or 0.0)
            teams.append({"team": r["team"], "tasks": r.get("tasks"),
                          "green_prs": r.get("green_prs"), "spend_usd": spend,
                          "cost_per_green_pr": r.get("cost_per_green_pr"),
                          "budget_usd": None if budget is None else budget * n_days,
                          "budget_share": None if not budget else spend / (budget * n_days)})
        repos = [{"repo": r["repo"], "tasks": r.get("tasks"), "green_prs": r.get("green_prs"),
                  "spend_usd": r.get("spend_total"), "cost_per_green_pr": r.get("cost_per_green_pr")}
                 for r in frame_records(compute_metrics(tasks, attempts, calls, fleet,
                                                        by=["repo"], **options))]
    since = datetime.combine(start, datetime.min.time(), UTC)
    until = datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC)
    anomalies = [a.as_dict() for a in store.list_anomalies(since=since, until=until)]
    forecast: list[dict[str, Any]] = []
    if not tasks.empty:
        from controlplane.spend import forecast_rows
        try:
            forecast = forecast_rows(state, fleet, start.isoformat(), end.isoformat())
        except Exception:  # noqa: BLE001 - a forecast that cannot fit leaves the section empty
            forecast = []
    promoted = [c for c in changes if c["state"] in ("active", "verified", "rolled_back")]
    totals = {
        "proposals": len(changes),
        "promoted": len(promoted),
        "rolled_back": sum(c["state"] == "rolled_back" for c in changes),
        "verified": sum(c["state"] == "verified" for c in changes),
        **_totals_of(state, fleet, frames),
        "saved_usd": sum(c["saved_usd"] or 0.0 for c in changes),
        "saved_low_usd": sum((c["saved_ci"] or [c["saved_usd"] or 0.0])[0] for c in changes),
        "saved_high_usd": sum((c["saved_ci"] or [0, c["saved_usd"] or 0.0])[-1]
                              for c in changes),
    }
    previous = {"quarter": _previous_quarter(quarter),
                **_totals_of(state, fleet, read_metric_frames(state, p_start.isoformat(),
                                                              p_end.isoformat()))}
    return QuarterlyReport(quarter, start.isoformat(), end.isoformat(), changes, daily,
                           register_rows, breaches, totals, previous, calibration, teams,
                           repos, anomalies, forecast, mix,
                           datetime.now(UTC).isoformat(timespec="seconds"), _audit_head(store))


def _team_budgets(store: Store) -> dict[str, float]:
    record = store.active_policy()
    if record is None:
        return {}
    return {team: b.usd_per_day for team, b in record.policy.spec.guardrails.team_budgets.items()}


# -------------------------------------------------------------------------------- charts
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    import io

    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pct_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v * 100:.0f}%"))


def _usd_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"${v:.3g}"))


def _day_axis(ax: Any, days: Sequence[str], markers: Mapping[str, str]) -> None:
    step = max(1, len(days) // 12)
    ax.set_xticks(range(0, len(days), step), [days[i][5:] for i in range(0, len(days), step)],
                  rotation=30, fontsize=7)
    ax.set_xlabel("day (UTC, MM-DD)")
    for day, label in markers.items():
        if day in days:
            ax.axvline(days.index(day) - 0.5, color="tab:red", linestyle="--", linewidth=1)
            ax.annotate(label, (days.index(day) - 0.45, 0.98),
                        xycoords=("data", "axes fraction"), fontsize=8, color="tab:red",
                        va="top")


def _daily_charts(daily: Sequence[Mapping[str, Any]], tier_mix: Sequence[Mapping[str, Any]],
                  markers: Mapping[str, str]) -> list[Chart]:
    if not daily:
        return []
    plt = _plt()
    days = [d["day"] for d in daily]
    serve = [i for i, d in enumerate(daily) if d["kind"] == "serve"]
    other = [i for i, d in enumerate(daily) if d["kind"] != "serve"]
    out: list[Chart] = []
    marked = "; ".join(f"{label} on {day}" for day, label in markers.items()) or "no change marked"
    for name, column, title, unit in (
            ("cost_per_green_pr", "cost_per_green_pr", "Cost per Green PR by day", "usd"),
            ("fpy", "fpy", "First-pass yield by day", "rate"),
            ("cache_hit_rate", "cache_hit_rate", "Cache hit rate by day", "rate")):
        values = [_num(d.get(column)) for d in daily]
        if name == "cache_hit_rate" and not any(values):
            continue  # a flat zero says nothing a sentence does not (the template says it)
        fig, ax = plt.subplots(figsize=(7, 2.8))
        ax.plot(serve, [values[i] for i in serve], marker="o", label="serve days")
        for i in other:
            ax.axvspan(i - 0.5, i + 0.5, color="0.85", zorder=0)
        if other:
            ax.plot([], [], color="0.85", linewidth=8, label="gate/eval traffic (not plotted)")
        top = max([v for i in serve if (v := values[i]) is not None] or [1.0])
        ax.set_ylim(0, 1.0 if unit == "rate" else top * 1.15)
        (_pct_axis if unit == "rate" else _usd_axis)(ax)
        ax.set_ylabel("$ per Green PR" if unit == "usd" else "% of tasks" if name == "fpy"
                      else "% of calls")
        ax.set_xlim(-0.5, len(days) - 0.5)
        _day_axis(ax, days, markers)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
        shown = [f"{days[i]} {fmt(values[i], unit)}" for i in serve]
        alt = (f"{title}, serve days only (gate/eval days shaded: "
               f"{', '.join(days[i] for i in other) or 'none'}); {marked}: "
               + "; ".join(shown[:31]))
        out.append(Chart(name, title, alt, _png(fig)))
    if tier_mix:
        tiers = [k for k in tier_mix[0] if k.startswith("tier_share_")]
        fig, ax = plt.subplots(figsize=(7, 2.8))
        bottom = [0.0] * len(tier_mix)
        for col in tiers:
            vals = [_num(r.get(col)) or 0.0 for r in tier_mix]
            ax.bar(range(len(tier_mix)), vals, bottom=bottom,
                   label=col.removeprefix("tier_share_"))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylim(0, 1.0)
        _pct_axis(ax)
        ax.set_ylabel("% of serve attempts")
        _day_axis(ax, [r["day"] for r in tier_mix], markers)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        alt = "Tier mix by day (share of serve attempts per tier); " + marked + "; " + "; ".join(
            f"{r['day']}: " + ", ".join(f"{c.removeprefix('tier_share_')} {fmt(r.get(c), 'rate')}"
                                        for c in tiers) for r in tier_mix[:31])
        out.append(Chart("tier_mix", "Tier mix by day", alt, _png(fig)))
    return out


def _looks_chart(predicted: Prediction, looks: Sequence[Mapping[str, Any]]) -> Chart | None:
    point = predicted.cost_per_green_pr_rel_delta
    shown = [lk for lk in looks if lk["realised"] is not None]
    if point is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    n = max(1, len(shown))
    ci = predicted.cost_per_green_pr_rel_delta_ci
    level = f"{predicted.level * 100:.0f}% " if predicted.level else ""
    if ci is not None:
        ax.axhspan(ci[0], ci[1], color="tab:blue", alpha=0.15,
                   label=f"predicted {level}interval")
    ax.axhline(point, color="tab:blue", label=f"predicted {fmt(point, 'rel')}")
    ax.axhline(0, color="black", linewidth=0.8)
    lows, highs = [], []
    for i, lk in enumerate(shown):
        r, rci = lk["realised"], lk["realised_ci"]
        err = None if not rci else [[r - rci[0]], [rci[1] - r]]
        ax.errorbar([i], [r], yerr=err, fmt="o", color="tab:orange", capsize=4,
                    label="realised (interval)" if i == 0 else None)
        lows.append(rci[0] if rci else r)
        highs.append(rci[1] if rci else r)
    values = [0.0, point, *(ci or ()), *lows, *highs]
    span = max(values) - min(values) or 0.1
    ax.set_ylim(min(values) - span * 0.1, max(values) + span * 0.1)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xticks(range(len(shown)), [f"{lk['kind']} look {lk['look']}" for lk in shown],
                  fontsize=8)
    _pct_axis(ax)
    ax.set_ylabel("change of cost per Green PR")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    alt = (f"Predicted change of cost per Green PR {fmt(point, 'rel')} "
           f"({fmt_interval(ci, 'rel')}) as a line and band; realised looks: "
           + ("; ".join(f"{lk['kind']} look {lk['look']} {fmt(lk['realised'], 'rel')} "
                        f"({fmt_interval(lk['realised_ci'], 'rel')})" for lk in shown)
              or "none yet"))
    return Chart("predicted_vs_realised", "Predicted against realised", alt, _png(fig))


def change_charts(r: ChangeReport) -> list[Chart]:
    """The change report's charts: predicted against realised, then the daily figures."""
    markers = {r.change_day: f"v{r.proposal['candidate_version']}"} if r.change_day else {}
    looks = _looks_chart(r.predicted, r.looks)
    return [*([looks] if looks else []), *_daily_charts(r.daily, r.tier_mix, markers)]


def charts_for(daily: Sequence[Mapping[str, Any]], tier_mix: Sequence[Mapping[str, Any]],
               change_day: str | None) -> dict[str, bytes]:
    """PNG charts of the daily figures by name (the change marked on ``change_day``)."""
    days = [{**d, "kind": d.get("kind") or _day_kind(d)} for d in daily]
    markers = {change_day: "change"} if change_day else {}
    return {c.name: c.png for c in _daily_charts(days, tier_mix, markers)}


def quarterly_charts(q: QuarterlyReport) -> list[Chart]:
    plt = _plt()
    out: list[Chart] = []
    markers: dict[str, str] = {}
    day_set = [d["day"] for d in q.daily]
    for c in q.changes:
        # the first telemetry day served under the candidate (replayed days are served
        # after a promotion stamped later); else the first day after its creation
        marker = c.get("first_day_served") or next(
            (d for d in day_set if d >= c["created"]), None)
        if marker and c["state"] in ("active", "verified", "rolled_back", "canary"):
            markers[marker] = f"v{c['candidate_version']}"
    if q.daily:
        days = [d["day"] for d in q.daily]
        fig, ax = plt.subplots(figsize=(7, 2.8))
        colors = ["tab:blue" if d["kind"] == "serve" else "0.6" for d in q.daily]
        ax.bar(range(len(days)), [_num(d.get("spend_total")) or 0.0 for d in q.daily],
               color=colors)
        if any(d["kind"] != "serve" for d in q.daily):
            from matplotlib.patches import Patch

            # Handles drawn explicitly: an empty bar series takes the default colour.
            ax.legend(handles=[Patch(color="tab:blue", label="serve days"),
                               Patch(color="0.6", label="gate/eval traffic")],
                      fontsize=7, loc="upper right")
        ax.set_ylabel("spend, $ per day")
        _usd_axis(ax)
        ax.set_ylim(bottom=0)
        _day_axis(ax, days, markers)
        ax.grid(alpha=0.3, axis="y")
        alt = ("Spend per day in dollars (grey: gate/eval traffic days); changes marked: "
               + (", ".join(f"{lbl} on {d}" for d, lbl in markers.items()) or "none") + "; "
               + "; ".join(f"{d['day']} {fmt(d.get('spend_total'), 'usd')}" for d in q.daily[:92]))
        out.append(Chart("spend", "Spend by day", alt, _png(fig)))
    out += [c for c in _daily_charts(q.daily, q.tier_mix, markers)
            if c.name in ("cost_per_green_pr", "tier_mix")]
    if q.calibration:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        xs = [r["predicted"] for r in q.calibration]
        ys = [r["realised"] for r in q.calibration]
        for r in q.calibration:
            xerr = None if r["predicted_low"] is None else [[r["predicted"] - r["predicted_low"]],
                                                            [r["predicted_high"] - r["predicted"]]]
            yerr = None if r["realised_low"] is None else [[r["realised"] - r["realised_low"]],
                                                           [r["realised_high"] - r["realised"]]]
            ax.errorbar([r["predicted"]], [r["realised"]], xerr=xerr, yerr=yerr, fmt="o",
                        capsize=3, color="tab:green" if r["inside"] else "tab:red")
            ax.annotate(r["proposal_id"][:10], (r["predicted"], r["realised"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        bounds = [0.0, *xs, *ys, *(v for r in q.calibration for v in
                                   (r["predicted_low"], r["predicted_high"], r["realised_low"],
                                    r["realised_high"]) if v is not None)]
        lo, hi = min(bounds), max(bounds)
        pad = (hi - lo) * 0.1 or 0.05
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", linestyle="--",
                label="realised = predicted")
        ax.plot([], [], "o", color="tab:green", label="inside the predicted interval")
        ax.plot([], [], "o", color="tab:red", label="outside")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v * 100:.0f}%"))
        _pct_axis(ax)
        ax.set_xlabel("predicted change of cost per Green PR")
        ax.set_ylabel("realised change")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        alt = ("Calibration: predicted against realised change of cost per Green PR per "
               "change, with the diagonal (green: inside the predicted interval, red: "
               "outside); " + "; ".join(
                   f"{r['proposal_id']} predicted {fmt(r['predicted'], 'rel')}, realised "
                   f"{fmt(r['realised'], 'rel')}" for r in q.calibration))
        out.append(Chart("calibration", "Calibration record", alt, _png(fig)))
    budgeted = [t for t in q.teams if t["budget_usd"]]
    if q.teams:
        fig, ax = plt.subplots(figsize=(7, 2.8))
        names = [str(t["team"]) for t in q.teams]
        ax.bar(range(len(names)), [t["spend_usd"] for t in q.teams], label="spend")
        if budgeted:
            ax.scatter([names.index(str(t["team"])) for t in budgeted],
                       [t["budget_usd"] for t in budgeted], marker="_", s=600, color="tab:red",
                       label="budget (daily budget x serve days)")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("spend in the quarter, $")
        _usd_axis(ax)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        alt = "Spend per team against budget in dollars; " + "; ".join(
            f"{t['team']} {fmt(t['spend_usd'], 'usd')} of "
            f"{fmt(t['budget_usd'], 'usd') if t['budget_usd'] else 'no budget'}" for t in q.teams)
        out.append(Chart("teams", "Spend per team against budget", alt, _png(fig)))
    return out


# ------------------------------------------------------------------------------- render
def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "html.j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["interval"] = fmt_interval
    env.filters["short"] = lambda s: "-" if not s else str(s)[:12]
    env.filters["cell"] = lambda v: fmt(v).replace("|", "\\|").replace("\n", " ")
    return env


def _prediction_rows(predicted: Prediction) -> list[dict[str, Any]]:
    """Each predicted figure with its name, unit, point and interval side by side."""
    rows = []
    for key, point, ci in predicted.figures():
        name, unit = FIGURES.get(key, (key, ""))
        rows.append({"key": key, "figure": name, "value": fmt(point, unit),
                     "interval": fmt_interval(ci, unit)})
    return rows


def _change_context(r: ChangeReport, charts: Sequence[Chart],
                    chart_files: Mapping[str, str]) -> dict[str, Any]:
    p = r.proposal
    verify_looks = [lk for lk in r.looks if lk["realised"] is not None]
    last = verify_looks[-1] if verify_looks else None
    serve_days = [d for d in r.daily if d["kind"] == "serve"]
    cache_flat = bool(serve_days) and not any(_num(d.get("cache_hit_rate")) for d in serve_days)
    return {"r": r, "p": p, "pred": r.predicted, "headline": headline(
                p["candidate_version"], r.predicted, last),
            "figures": _prediction_rows(r.predicted), "charts": charts,
            "chart_files": chart_files, "ev": r.evidence_info, "head": r.audit_head,
            "cache_flat": cache_flat, "exploration": r.predicted.exploration}


def render_change_markdown(r: ChangeReport, chart_files: Mapping[str, str] | None = None,
                           charts: Sequence[Chart] | None = None) -> str:
    charts = list(charts if charts is not None else change_charts(r))
    return _env().get_template("change.md.j2").render(
        **_change_context(r, charts, chart_files or {}))


def render_change_html(r: ChangeReport, charts: Sequence[Chart] | Mapping[str, bytes]) -> str:
    if isinstance(charts, Mapping):
        charts = [Chart(n, n, n, png) for n, png in charts.items()]
    return _env().get_template("change.html.j2").render(**_change_context(r, charts, {}))


def _quarterly_context(q: QuarterlyReport, charts: Sequence[Chart],
                       chart_files: Mapping[str, str]) -> dict[str, Any]:
    t, prev = q.totals, q.previous

    def vs(key: str, unit: str) -> str:
        a, b = _num(t.get(key)), _num(prev.get(key))
        if a is None or b is None or b == 0:
            return "-"
        return fmt(a / b - 1, "rel")

    summary = [
        {"figure": "Spend", "this": fmt(t.get("spend_usd"), "usd"),
         "previous": fmt(prev.get("spend_usd"), "usd"), "change": vs("spend_usd", "usd")},
        {"figure": "Tasks", "this": fmt(t.get("tasks")), "previous": fmt(prev.get("tasks")),
         "change": vs("tasks", "")},
        {"figure": "Green PRs", "this": fmt(t.get("green_prs")),
         "previous": fmt(prev.get("green_prs")), "change": vs("green_prs", "")},
        {"figure": "Cost per Green PR", "this": fmt(t.get("cost_per_green_pr"), "usd"),
         "previous": fmt(prev.get("cost_per_green_pr"), "usd"),
         "change": vs("cost_per_green_pr", "usd")},
        {"figure": "First-pass yield", "this": fmt(t.get("fpy"), "rate"),
         "previous": fmt(prev.get("fpy"), "rate"), "change": "-"},
    ]
    register = []
    for row in q.register_by_month:
        for e in row.get("entries", []):
            unit = REGISTER_UNITS.get(e["id"], "")
            register.append({"month": row["month"], "id": e["id"], "name": e["name"],
                             "value": fmt(e["value"], unit),
                             "target": "-" if e["target"] is None
                             else f"{e['comparator'] or ''} {fmt(e['target'], unit)}".strip(),
                             "status": e["status"]})
    return {"q": q, "t": t, "prev": prev, "summary": summary, "register": register,
            "charts": charts, "chart_files": chart_files, "head": q.audit_head}


def render_quarterly_markdown(q: QuarterlyReport, chart_files: Mapping[str, str] | None = None,
                              charts: Sequence[Chart] | None = None) -> str:
    charts = list(charts if charts is not None else quarterly_charts(q))
    return _env().get_template("quarterly.md.j2").render(
        **_quarterly_context(q, charts, chart_files or {}))


def render_quarterly_html(q: QuarterlyReport, charts: Sequence[Chart] | Mapping[str, bytes]
                          ) -> str:
    if isinstance(charts, Mapping):
        charts = [Chart(n, n, n, png) for n, png in charts.items()]
    return _env().get_template("quarterly.html.j2").render(**_quarterly_context(q, charts, {}))


# -------------------------------------------------------------------------------- write
def _write(folder: Path, stem: str, markdown_fn, html_fn, charts: Sequence[Chart]
           ) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    chart_files = {}
    for chart in charts:
        path = folder / f"{stem}-{chart.name}.png"
        path.write_bytes(chart.png)
        chart_files[chart.name] = path.name
    md = folder / f"{stem}.md"
    md.write_text(markdown_fn(chart_files), encoding="utf-8")
    page = folder / f"{stem}.html"
    page.write_text(html_fn(), encoding="utf-8")
    return {"markdown": str(md), "html": str(page), "charts": str(len(chart_files))}


def write_change_report(state: StateDir, store: Store, fleet: FleetManifest,
                        proposal_id: str) -> dict[str, str]:
    report = gather_change_report(state, store, fleet, proposal_id)
    charts = change_charts(report)
    return _write(state.reports_dir / "changes", proposal_id,
                  lambda files: render_change_markdown(report, files, charts),
                  lambda: render_change_html(report, charts), charts)


def write_quarterly_report(state: StateDir, store: Store, fleet: FleetManifest,
                           quarter: str) -> dict[str, str]:
    """The quarter's report; every change it links is written too where it is missing."""
    report = gather_quarterly_report(state, store, fleet, quarter)
    for c in report.changes:
        if not (state.reports_dir / "changes" / f"{c['proposal_id']}.html").exists():
            write_change_report(state, store, fleet, c["proposal_id"])
    charts = quarterly_charts(report)
    return _write(state.reports_dir / "quarterly", report.quarter,
                  lambda files: render_quarterly_markdown(report, files, charts),
                  lambda: render_quarterly_html(report, charts), charts)
