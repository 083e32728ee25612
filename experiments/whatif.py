"""``autopilot whatif``: the search on a telemetry window, with no fleet running.

Telemetry is an ingested warehouse (a directory with ``tasks/day=...`` partitions) or raw
span files / folders, which are ingested into a temporary warehouse first. The ranked
candidates are written as policy YAML files (``candidate-01-routing-<hash12>.yaml``) with
a ``whatif.json`` summary beside them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WhatifReport", "open_telemetry", "run_whatif"]


@dataclass
class WhatifReport:
    rows: list[dict[str, Any]]
    active: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    evaluated: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


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
               progress: bool = True) -> WhatifReport:
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
                               seed=seed, progress=progress, executor=executor)
    out_dir = Path(out) if out is not None else None
    files: list[Path] = []
    rows = []
    for rank, cand in enumerate(result, start=1):
        row = {"rank": rank, **cand.summary()}
        if out_dir is not None:
            path = out_dir / f"candidate-{rank:02d}-{cand.lever}-{cand.policy.content_hash[:12]}.yaml"
            save_policy(cand.policy, path)
            files.append(path)
            row["file"] = path.name
        rows.append(row)
    a = result.active_estimate
    active = {"version": active_policy.metadata.version, "hash": active_policy.content_hash[:12],
              "cost_per_green_pr": str(a.cost_per_green_pr), "green_prs": str(a.green_prs),
              "fpy": str(a.fpy), "tasks": a.n_tasks}
    report = WhatifReport(rows=rows, active=active, files=files, evaluated=result.evaluated,
                          seconds=result.seconds, notes=notes + list(a.notes))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            "active": active,
            "evaluated": result.evaluated,
            "seconds": result.seconds,
            "candidates": [
                {**row, "estimate": c.estimate.as_dict(), "deltas": c.deltas.as_dict(),
                 "reasons": c.reasons, "point": c.point}
                for row, c in zip(rows, result)
            ],
        }
        (out_dir / "whatif.json").write_text(json.dumps(summary, indent=2, default=str))
    return report
