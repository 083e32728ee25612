"""``autopilot whatif``: the search on a telemetry window, with no fleet running.

Telemetry is an ingested warehouse (a directory with ``tasks/day=...`` partitions) or raw
span files / folders, which are ingested into a temporary warehouse first. The ranked
candidates are written as policy YAML files (``candidate-01-routing-<hash12>.yaml``) with
a ``whatif.json`` summary beside them.

Candidates come ranked by the pessimistic end of their interval (the high end of the
relative change of cost per Green PR, ``experiments.search.rank_key``). The report has two
forms: numbers (``WhatifReport.as_dict``: ``--json`` and ``whatif.json``; every interval
``{point, low, high}``, null where unbounded) and a table for people (``rows``,
``active_row``) that shows the point, the interval and the support side by side.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RANKED_BY", "WhatifReport", "candidate_row", "open_telemetry", "run_whatif"]

RANKED_BY = ("feasible first, then the high end of the interval of the relative change of "
             "cost per Green PR (the least saving the interval admits), then the point")


def _finite(value: Any) -> Any:
    """JSON without Infinity/NaN: a non-finite number becomes null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _num(value: float | None, spec: str) -> str:
    return "unbounded" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "unbounded" if value is None else f"{100 * value:+.1f}%"


def _span(iv: dict[str, float | None], fmt) -> str:
    return f"[{fmt(iv['low'])}, {fmt(iv['high'])}]"


def _interval_text(iv: dict[str, float | None], spec: str) -> str:
    return f"{_num(iv['point'], spec)} {_span(iv, lambda v: _num(v, spec))}"


def candidate_row(record: dict[str, Any]) -> dict[str, Any]:
    """One table row for people from a candidate's numbers (``Candidate.record``): the
    relative change of cost per Green PR (``d_cost``), its interval (``d_cost_ci``, whose
    high end ranks) and the support side by side, then Green PRs and FPY and the cost per
    Green PR, each "point [low, high]"."""
    d = record["deltas"]
    cost, green = d["cost_per_green_pr_rel"], d["green_prs_rel"]
    return {
        "rank": record.get("rank"),
        "lever": record["lever"],
        "hash": record["hash"],
        "d_cost": _pct(cost["point"]),
        "d_cost_ci": _span(cost, _pct),
        "support": round(record["support"], 3),
        "d_green": f"{_pct(green['point'])} {_span(green, _pct)}",
        "d_fpy": _interval_text(d["fpy_abs"], "+.3f"),
        "cost_per_green": _interval_text(record["cost_per_green_pr"], ".4g"),
        "feasible": record["feasible"],
        "risk": record["risk"],
        **({"file": record["file"]} if "file" in record else {}),
    }


@dataclass
class WhatifReport:
    """``candidates``/``active``: numbers; ``rows``/``active_row``: the same for people."""

    rows: list[dict[str, Any]]
    active: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def active_row(self) -> dict[str, Any]:
        """The active policy's figures for people: point [interval]."""
        a = self.active
        return {"version": a["version"], "hash": a["hash"],
                "cost_per_green_pr": _interval_text(a["cost_per_green_pr"], ".4g"),
                "green_prs": _interval_text(a["green_prs"], ".4g"),
                "fpy": _interval_text(a["fpy"], ".3f"),
                "support": round(a["support"], 3), "tasks": a["tasks"]}

    def as_dict(self) -> dict[str, Any]:
        """The numbers form (``whatif --json``)."""
        return _finite({"active": self.active, "candidates": self.candidates,
                        "ranked_by": RANKED_BY, "evaluated": self.evaluated,
                        "seconds": self.seconds, "notes": list(self.notes)})


def _is_warehouse(path: Path) -> bool:
    from telemetry.warehouse import list_days

    return path.is_dir() and bool(list_days(path, "tasks"))


def open_telemetry(paths: Sequence[str | Path], scratch: Path) -> tuple[Path, list[str]]:
    """A warehouse root for ``paths``: the path itself, or a temporary ingest of the spans."""
    from telemetry.ingest import ingest_paths

    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"--telemetry: no such file or directory: {', '.join(missing)}")
    if len(paths) == 1 and _is_warehouse(paths[0]):
        return paths[0], []
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    root = scratch / "telemetry"
    report = ingest_paths(files, root)
    notes = [(f"ingested {report.stored_total} span rows from {len(files)} file(s) into a "
             "temporary warehouse")]
    if report.quarantined_total:
        notes.append(f"{report.quarantined_total} malformed span(s) quarantined")
    return root, notes


def run_whatif(telemetry: Sequence[str | Path], fleet_path: str | Path, active_policy, *,
               lever: str = "routing", out: str | Path | None = None, candidates: int = 10,
               since: str | None = None, until: str | None = None, trials: int = 8,
               per_trial: int = 32, seed: int = 0, executor: str = "tune",
               progress: bool = True, widen: dict[str, float] | None = None) -> WhatifReport:
    """``widen``: per lever, the interval inflation of the calibration record (the same the
    nightly applies, ``controlplane.loop.calibration``), so whatif and the nightly agree."""
    from contracts.manifest import load_fleet
    from experiments.estimator import point_summary  # noqa: F401  (keeps import errors early)
    from experiments.search import search_candidates
    from experiments.window import load_estimator_window
    from policies.policy import save_policy

    fleet = load_fleet(fleet_path)
    with tempfile.TemporaryDirectory(prefix="autopilot-whatif-") as scratch:
        root, notes = open_telemetry(telemetry, Path(scratch))
        window = load_estimator_window(root, since, until, fleet=fleet)
    levers: Any = "all" if lever == "all" else (lever,)
    result = search_candidates(window, fleet, active_policy, levers=levers,
                               candidates=candidates, trials=trials, per_trial=per_trial,
                               seed=seed, progress=progress, executor=executor, widen=widen)
    out_dir = Path(out) if out is not None else None
    files: list[Path] = []
    records = []
    for rank, cand in enumerate(result, start=1):
        record = {"rank": rank, **cand.record()}
        if out_dir is not None:
            path = out_dir / f"candidate-{rank:02d}-{cand.lever}-{cand.policy.content_hash[:12]}.yaml"
            save_policy(cand.policy, path)
            files.append(path)
            record["file"] = path.name
        records.append(record)
    a = result.active_estimate
    active = {"version": active_policy.metadata.version, "hash": active_policy.content_hash[:12],
              "cost_per_green_pr": a.cost_per_green_pr.as_dict(),
              "green_prs": a.green_prs.as_dict(), "fpy": a.fpy.as_dict(),
              "spend_usd": a.spend_usd.as_dict(), "support": a.support, "level": a.level,
              "tasks": a.n_tasks}
    active = _finite(active)
    report = WhatifReport(rows=[candidate_row(r) for r in records], active=active,
                          files=files, evaluated=result.evaluated, seconds=result.seconds,
                          notes=notes + list(a.notes) + [
                              f"intervals of {k} widened x{v:.2f} by the calibration record"
                              for k, v in sorted((widen or {}).items()) if v > 1.0],
                          candidates=records)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            **report.as_dict(),
            "candidates": _finite([
                {**record, "estimate": c.estimate.as_dict(), "point": c.point}
                for record, c in zip(records, result)
            ]),
        }
        (out_dir / "whatif.json").write_text(json.dumps(summary, indent=2, default=str))
    return report
