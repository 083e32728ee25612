"""``autopilot demo``: the embedded default end to end, with a line per step.

Today it runs the foundation: state directory, a simulated day of work under the active
policy, ingestion, metrics, FinOps register, audit verification. Each later capability
(reference fleet, nightly optimisation, gates, promotion) adds its steps here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from controlplane.settings import StateDir

__all__ = ["run_demo"]


def run_demo(state: StateDir, *, tasks: int, fresh: bool, echo: Callable[[str], None]) -> dict:
    from controlplane.bootstrap import initialise_state
    from controlplane.store import Store
    from controlplane.telemetry.ingest import ingest_paths
    from controlplane.telemetry.synthetic import WorkloadShape, simulate_spans, write_spans
    from controlplane.views import audit_rows, finops_rows, metrics_rows, print_rows
    from serving.manifest import load_fleet

    steps = 6
    t_start = time.perf_counter()

    def step(i: int, text: str) -> None:
        echo(f"[{i}/{steps}] {text}  (+{time.perf_counter() - t_start:.1f}s)")

    if fresh and state.root.exists():
        shutil.rmtree(state.root)
    step(1, f"initialising state in {state.root}")
    info = initialise_state(state)
    echo(f"      fleet {info['fleet']}; active policy {info['active_policy']}")

    fleet = load_fleet(state.fleet_path)
    store = Store.open(state.store_url())
    policy = store.active_policy().policy
    day = "2026-11-20"
    step(2, f"simulating {tasks} tasks on {day} under policy v{policy.metadata.version} "
            "(seeded simulator, not the reference fleet)")
    spans_file = state.spans_dir / f"simulated-{day}.jsonl"
    n_spans = write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, day=day)),
                          spans_file)
    echo(f"      wrote {n_spans} spans to {spans_file}")

    step(3, "ingesting telemetry")
    report = ingest_paths([spans_file], state.telemetry_dir)
    data = report.as_dict()
    echo(f"      stored {data.get('stored')} | quarantined {data.get('quarantined')} | "
         f"{data.get('seconds', 0):.2f}s")

    step(4, "metrics per family")
    rows = metrics_rows(state, fleet, ["family"], None, None)
    print_rows(rows, title="metrics by family", columns=[
        "family", "tasks", "green_prs", "fpy", "cost_per_green_pr", "spend_total",
        "eval_share", "cache_hit_rate"])
    whole = metrics_rows(state, fleet, [], None, None)[0]

    step(5, "FinOps register")
    register, _budgets = finops_rows(state, fleet, None, None)
    print_rows(register, title="FinOps register",
               columns=["id", "name", "status", "message"])

    step(6, "verifying the audit chain")
    verification = store.verify_audit()
    echo(f"      audit chain ok={verification.ok} over {verification.entries_checked} entries")
    print_rows(audit_rows(store, 5), title="latest audit entries")

    summary = {
        "cost_per_green_pr": whole.get("cost_per_green_pr"),
        "fpy": whole.get("fpy"),
        "green_prs": whole.get("green_prs"),
        "tasks": whole.get("tasks"),
        "breaches": sum(1 for r in register if r.get("status") == "BREACH"),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    echo(
        f"\nDay {day} (simulated): {summary['tasks']} tasks, {summary['green_prs']} Green PRs, "
        f"FPY {summary['fpy']:.2f}, cost per Green PR ${summary['cost_per_green_pr']:.4f}, "
        f"{summary['breaches']} FinOps breach(es). Done in {summary['seconds']}s.\n"
        f"State: {state.root}  (try: autopilot --state-dir {state.root} metrics --by team)"
    )
    return summary
