"""``autopilot demo``: the whole loop on the embedded default, with a line per step.

Start the reference fleet (Ray Serve + vLLM on the committed, pinned tiny models), drive a
day of tasks under a deliberately naive policy (everything to the top tier, no caching),
run the nightly flow for real (Prefect, Ray Tune, gates through the running fleet), approve
as the demo's explicit approver identity, promote (the gateway reloads without a restart),
drive a second day, run the verify flow, and write the reports. Every figure it prints is
measured from the telemetry the run produced.

``--simulated`` keeps the old quick tour: a seeded span simulator instead of the fleet.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controlplane.settings import StateDir

__all__ = ["DEMO_APPROVER", "DemoPlan", "demo_plan", "run_demo", "run_simulated_demo"]

DEMO_APPROVER = "demo-approver"
REFERENCE_FLEET = Path(__file__).resolve().parent.parent / "training" / "fleet"
NAIVE_POLICY = Path(__file__).parent / "starter" / "naive_policy.yaml"


@dataclass(frozen=True)
class DemoPlan:
    tasks_per_day: int
    concurrency: int
    levers: tuple[str, ...]
    search: dict[str, Any]
    day1: str
    day2: str


def demo_plan(*, quick: bool, tasks: int | None, today: datetime | None = None) -> DemoPlan:
    """What the demo will do (pure): sizes for the full and the quick run."""
    now = today or datetime.now(UTC)
    day1 = (now - timedelta(days=2)).date().isoformat()
    day2 = (now - timedelta(days=1)).date().isoformat()
    # A day must be large enough for the estimator to be confident about something: on
    # 240 tasks of the naive start every candidate's Green PR interval crossed the 2%
    # margin, so nothing could be promoted honestly. Driving is cheap (about 12 ms a task
    # on 2 cores); the fleet start and the gates dominate the demo's time.
    if quick:
        return DemoPlan(tasks or 600, 8, ("routing", "guardrails"),
                        {"executor": "tune", "trials": 4, "per_trial": 32, "bootstrap": 100},
                        day1, day2)
    return DemoPlan(tasks or 1500, 8, ("routing", "quantization", "cache", "guardrails"),
                    {"executor": "tune", "trials": 6, "per_trial": 48, "bootstrap": 200},
                    day1, day2)


class _Steps:
    def __init__(self, total: int, echo: Callable[[str], None]):
        self.total, self.echo, self.i = total, echo, 0
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        self.i += 1
        self.echo(f"[{self.i}/{self.total}] {text}  (+{time.perf_counter() - self.t0:.0f}s)")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _progress(echo: Callable[[str], None], label: str) -> Callable[[int, int], None]:
    marks: set[int] = set()

    def report(done: int, total: int) -> None:
        decile = done * 10 // max(total, 1)
        if decile not in marks and (decile % 2 == 0 or done == total):
            marks.add(decile)
            echo(f"      {label}: {done}/{total} tasks")

    return report


def _drive_day(state: StateDir, url: str, day: str, plan: DemoPlan, seed: int,
               echo: Callable[[str], None]) -> dict[str, Any]:
    from serving.client import GatewayClient
    from telemetry.otel import configure_tracing, shutdown_tracing
    from workload.driver import WorkloadSpec, drive

    spec = WorkloadSpec(tasks=plan.tasks_per_day, seed=seed, day=day,
                        concurrency=plan.concurrency)
    provider = configure_tracing(jsonl_path=state.spans_dir / f"driver-{day}.jsonl")
    client = GatewayClient(url)
    try:
        report = drive(spec, client, tracer_provider=provider,
                       progress=_progress(echo, f"day {day}"))
    finally:
        shutdown_tracing()
    client.flush_spans()
    return report.as_dict()


def _ingest(state: StateDir) -> dict[str, Any]:
    from controlplane.bootstrap import record_ingest
    from store import Store
    from telemetry.ingest import ingest_paths

    files = sorted(p for p in state.spans_dir.rglob("*.jsonl") if p.is_file())
    report = ingest_paths(files, state.telemetry_dir).as_dict()
    with Store.open(state.store_url()) as store:
        record_ingest(store, report)
    return report


def _day_metrics(state: StateDir, fleet: Any, day: str) -> dict[str, Any]:
    from controlplane.views import metrics_rows

    rows = metrics_rows(state, fleet, [], day, day)
    return rows[0] if rows else {}


def _wait_for_policy(url: str, version: int, timeout_s: float = 60.0) -> bool:
    from serving.client import GatewayClient

    client = GatewayClient(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(client.policy().get("version", -1)) == version:
            return True
        time.sleep(0.5)
    return False


def run_demo(state: StateDir, *, quick: bool = False, tasks: int | None = None,
             fresh: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole loop on the reference fleet; returns the summary it prints."""
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.loop.gating import FleetInProcess
    from controlplane.loop.waiting import prefect_environment
    from controlplane.reports import write_quarterly_report
    from policies.policy import describe_diff
    from serving.fleet import start_fleet
    from store import Store

    plan = demo_plan(quick=quick, tasks=tasks)
    step = _Steps(10, echo)
    if fresh and state.root.exists():
        shutil.rmtree(state.root)
    step(f"initialising {state.root} with the reference fleet and a naive policy")
    info = initialise_state(state, fleet_file=REFERENCE_FLEET / "fleet.yaml",
                            policy_file=NAIVE_POLICY)
    settings = state.settings()
    if DEMO_APPROVER not in settings.platform_owners:
        state.save_settings(settings.model_copy(
            update={"platform_owners": [*settings.platform_owners, DEMO_APPROVER]}))
    echo(f"      fleet {info['fleet']}; active policy {info['active_policy']}")
    fleet = load_fleet(state.fleet_path)
    prefect_environment(state)

    step("starting the reference fleet: Ray Serve + vLLM, weights checked against the manifest")
    handle = start_fleet(state.fleet_path, store_url=state.store_url(),
                         spans_path=state.spans_dir / "gateway.jsonl")
    summary: dict[str, Any] = {"state_dir": str(state.root), "gateway": handle.url,
                               "days": [plan.day1, plan.day2]}
    try:
        echo(f"      gateway {handle.url}")
        step(f"day 1 ({plan.day1}): driving {plan.tasks_per_day} tasks under policy v1")
        summary["drive_day1"] = _drive_day(state, handle.url, plan.day1, plan, 1, echo)
        _ingest(state)
        day1 = _day_metrics(state, fleet, plan.day1)

        step("nightly flow (Prefect): observe, learn, Ray Tune search, gates, approval, promote")
        from controlplane.flows import nightly

        nightly_result = nightly(state_dir=str(state.root), since=plan.day1, until=plan.day1,
                                 levers=list(plan.levers), gate_serving=FleetInProcess(handle),
                                 approver=DEMO_APPROVER, search=plan.search)
        summary["nightly"] = nightly_result
        with Store.open(state.store_url()) as store:
            active = store.active_policy()
        promoted = [e for e in nightly_result.get("proposals", []) if "active_version" in e]

        step(f"waiting for the gateway to serve policy v{active.version} (no restart)")
        reloaded = _wait_for_policy(handle.url, active.version)
        echo(f"      gateway serves v{active.version}: {reloaded}")
        summary["active_version"] = active.version
        summary["gateway_serves_active"] = reloaded

        step(f"day 2 ({plan.day2}): driving {plan.tasks_per_day} tasks under policy "
             f"v{active.version}")
        summary["drive_day2"] = _drive_day(state, handle.url, plan.day2, plan, 2, echo)
        _ingest(state)
        day2 = _day_metrics(state, fleet, plan.day2)

        step("verify flow (Prefect): realised against predicted, rollback on regression")
        from controlplane.flows import verify

        summary["verify"] = verify(state_dir=str(state.root), since=plan.day2, until=plan.day2)

        step("reports")
        quarter = f"{datetime.now(UTC).year}Q{(datetime.now(UTC).month - 1) // 3 + 1}"
        with Store.open(state.store_url()) as store:
            quarterly = write_quarterly_report(state, store, fleet, quarter)
            change = None
            diff: list[str] = []
            predicted: dict[str, Any] = {}
            if promoted:
                pid = promoted[0]["proposal_id"]
                from controlplane.reports import write_change_report

                change = write_change_report(state, store, fleet, pid)
                p = store.get_proposal(pid)
                diff = describe_diff(store.get_policy(p.baseline_version).policy,
                                     store.get_policy(p.candidate_version).policy)
                predicted = p.predicted.record()
            audit_ok = store.verify_audit().ok
    finally:
        step("shutting the fleet down")
        handle.shutdown()

    summary.update({
        "day1": _figures(day1), "day2": _figures(day2), "promoted": bool(promoted),
        "diff": diff, "predicted": predicted, "change_report": change,
        "quarterly_report": quarterly, "audit_ok": audit_ok,
        "seconds": round(step.elapsed, 1),
    })
    _print_summary(summary, echo)
    return summary


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    shares = {k.removeprefix("tier_share_"): row[k] for k in row if k.startswith("tier_share_")}
    return {"tasks": row.get("tasks"), "green_prs": row.get("green_prs"), "fpy": row.get("fpy"),
            "cost_per_green_pr": row.get("cost_per_green_pr"), "spend": row.get("spend_total"),
            "cache_hit_rate": row.get("cache_hit_rate"), "tier_mix": shares}


def _money(v: Any) -> str:
    return "-" if v is None else f"${v:.6f}"


def _print_summary(s: dict[str, Any], echo: Callable[[str], None]) -> None:
    d1, d2 = s["day1"], s["day2"]
    echo("")
    echo("=" * 78)
    echo("Measured from the run's own telemetry (reference fleet, real serving path):")
    for label, d in (("day 1", d1), ("day 2", d2)):
        mix = ", ".join(f"{k} {v:.0%}" for k, v in d["tier_mix"].items() if v is not None)
        fpy = "-" if d["fpy"] is None else f"{d['fpy']:.3f}"
        echo(f"  {label}: {d['tasks']} tasks, {d['green_prs']} Green PRs, FPY {fpy}, "
             f"cost per Green PR {_money(d['cost_per_green_pr'])}  (tiers: {mix})")
    c1, c2 = d1.get("cost_per_green_pr"), d2.get("cost_per_green_pr")
    if c1 and c2:
        echo(f"  change in cost per Green PR: {c2 / c1 - 1:+.1%}")
    if s["promoted"]:
        pred = s["predicted"].get("cost_per_green_pr_rel_delta")
        ci = s["predicted"].get("cost_per_green_pr_rel_delta_ci")
        why = "" if pred is None else f" (predicted {pred:+.1%}" + (
            f", interval {ci[0]:+.1%}..{ci[1]:+.1%})" if ci else ")")
        echo(f"Promoted{why}:")
        for line in s["diff"]:
            echo(f"  - {line}")
        echo(f"Verify: {s['verify'].get('outcome')}: {s['verify'].get('message', '')[:160]}")
    else:
        nightly = s["nightly"]
        stopped = "; ".join(f"{p['proposal_id']} {p.get('stopped', p.get('state'))}"
                            for p in nightly.get("proposals", []))
        skipped = "; ".join(f"{h} {why}" for h, why in nightly.get("skipped_candidates", [])[:3])
        echo("Nothing was promoted tonight: " + (
            stopped or nightly.get("skipped") or
            f"no candidate cleared the bar ({skipped or 'the search returned none'})"))
    if s.get("change_report"):
        echo(f"Change report: {s['change_report']['html']}")
    echo(f"Quarterly report: {s['quarterly_report']['html']}")
    echo(f"Audit chain verified: {s['audit_ok']}. Done in {s['seconds']}s. "
         f"State: {s['state_dir']}")


def run_simulated_demo(state: StateDir, *, tasks: int, fresh: bool,
                       echo: Callable[[str], None]) -> dict:
    """The quick tour without engines: a seeded simulator (clearly labelled as such)."""
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.views import finops_rows, metrics_rows, print_rows
    from store import Store
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    step = _Steps(4, echo)
    if fresh and state.root.exists():
        shutil.rmtree(state.root)
    step(f"initialising state in {state.root}")
    initialise_state(state)
    fleet = load_fleet(state.fleet_path)
    with Store.open(state.store_url()) as store:
        policy = store.active_policy().policy
    day = "2026-11-20"
    step(f"simulating {tasks} tasks under policy v{policy.metadata.version} (seeded simulator, "
         "not measured)")
    spans_file = state.spans_dir / f"simulated-{day}.jsonl"
    write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, day=day)), spans_file)
    ingest_paths([spans_file], state.telemetry_dir)
    step("metrics per family")
    print_rows(metrics_rows(state, fleet, ["family"], None, None), title="metrics by family",
               columns=["family", "tasks", "green_prs", "fpy", "cost_per_green_pr"])
    step("FinOps register")
    register, _ = finops_rows(state, fleet, None, None)
    print_rows(register, title="FinOps register", columns=["id", "name", "status", "message"])
    whole = metrics_rows(state, fleet, [], None, None)[0]
    return {"tasks": whole.get("tasks"), "cost_per_green_pr": whole.get("cost_per_green_pr")}
