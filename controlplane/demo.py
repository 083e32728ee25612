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
from store.records import realised_gap

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
    days: tuple[str, ...]  # one more day than nights: the last night's change is served too

    @property
    def nights(self) -> int:
        return len(self.days) - 1

    @property
    def day1(self) -> str:
        return self.days[0]

    @property
    def day2(self) -> str:
        return self.days[1]


def demo_plan(*, quick: bool, tasks: int | None, today: datetime | None = None,
              nights: int | None = None) -> DemoPlan:
    """What the demo will do (pure): sizes for the full and the quick run. The full run
    shows three nights (each judges the day before it and changes at most one thing); the
    quick one a single night."""
    now = today or datetime.now(UTC)
    n = nights if nights is not None else (1 if quick else 3)
    if n < 1:
        raise ValueError(f"nights must be at least 1 (got {n})")
    days = tuple((now - timedelta(days=n + 1 - k)).date().isoformat() for k in range(n + 1))
    # A day must be large enough for the estimator to be confident about something: on
    # 240 tasks of the naive start every candidate's Green PR interval crossed the 2%
    # margin, so nothing could be promoted honestly. Driving is cheap (about 12 ms a task
    # on 2 cores); the fleet start and the gates dominate the demo's time.
    if quick:
        # 800 tasks: a 25% canary sees about 200, enough for its first look to decide.
        return DemoPlan(tasks or 800, 8, ("routing", "guardrails"),
                        {"executor": "tune", "trials": 4, "per_trial": 32, "bootstrap": 100},
                        days)
    return DemoPlan(tasks or 1500, 8, ("routing", "quantization", "cache", "guardrails"),
                    {"executor": "tune", "trials": 6, "per_trial": 48, "bootstrap": 200},
                    days)


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


def _wait_for_policy(url: str, version: int, canary: tuple[int, float] | None = None,
                     timeout_s: float = 60.0) -> bool:
    """Until the gateway serves ``version`` as active and ``canary`` (version, share) beside
    it (None: no canary)."""
    from serving.client import GatewayClient

    client = GatewayClient(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = client.policy()
        got = served.get("canary")
        have = None if not got else (int(got["version"]), float(got["share"]))
        if int(served.get("version", -1)) == version and have == canary:
            return True
        time.sleep(0.5)
    return False


def _store_serving(state: StateDir) -> tuple[int, tuple[int, float] | None]:
    """What the store says the gateway should serve: the active version and the canary."""
    from store import Store

    with Store.open(state.store_url()) as store:
        rollout = store.current_rollout()
        return store.active_policy().version, (
            None if rollout is None else (rollout.candidate_version, rollout.share))


def run_demo(state: StateDir, *, quick: bool = False, tasks: int | None = None,
             fresh: bool = True, nights: int | None = None,
             echo: Callable[[str], None] = print,
             with_fleet: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The whole loop on the reference fleet, night after night; returns the summary it
    prints. Day k is served under whatever the nights before it promoted; night k judges
    day k (the nightly flow) after the verify flow has judged night k-1's change on it.
    ``with_fleet(gateway_url)`` runs after the last day while the fleet is still up (the
    loop benchmark measures its full-information anchor there); its result is
    ``summary["with_fleet"]``."""
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.flows import nightly, verify
    from controlplane.loop.gating import FleetInProcess
    from controlplane.loop.waiting import prefect_environment
    from controlplane.reports import write_quarterly_report
    from serving.fleet import start_fleet
    from store import Store

    plan = demo_plan(quick=quick, tasks=tasks, nights=nights)
    step = _Steps(4 + 2 * plan.nights + (plan.nights + 1), echo)
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
                               "days": list(plan.days), "nights": []}
    figures: list[dict[str, Any]] = []
    try:
        echo(f"      gateway {handle.url}")
        for k, day in enumerate(plan.days):
            serving, canary = _store_serving(state)
            if k > 0 and not _wait_for_policy(handle.url, serving, canary):
                echo(f"      the gateway did not pick up v{serving} / canary {canary} in 60 s")
            under = f"v{serving}" + ("" if canary is None else
                                     f" ({1 - canary[1]:.0%}) and canary v{canary[0]} "
                                     f"({canary[1]:.0%})")
            step(f"day {k + 1} ({day}): driving {plan.tasks_per_day} tasks under policy "
                 f"{under}")
            summary[f"drive_day{k + 1}"] = _drive_day(state, handle.url, day, plan, k + 1, echo)
            _ingest(state)
            figures.append({"day": day, "version": serving, "served": under,
                            **_figures(_day_metrics(state, fleet, day))})
            if k > 0 and (summary["nights"][-1]["promoted"] or canary is not None
                          or summary["nights"][-1].get("canary")):
                result = verify(state_dir=str(state.root), since=day, until=day)
                summary["nights"][-1]["verify"] = result
                echo(f"      verify of night {k}: {result.get('outcome')}: "
                     f"{str(result.get('message', ''))[:150]}")
            if k == plan.nights:
                break
            step(f"night {k + 1}: nightly flow (Prefect) over {day}: observe, learn, Ray Tune "
                 "search, gates, approval, promote")
            judged_against, _ = _store_serving(state)  # after the verify flow's step
            result = nightly(state_dir=str(state.root), since=day, until=day,
                             levers=list(plan.levers), gate_serving=FleetInProcess(handle),
                             approver=DEMO_APPROVER, search=plan.search, seed=k)
            night = _night_record(state, k + 1, day, judged_against, result)
            summary["nights"].append(night)
            echo(f"      night {k + 1}: {night['headline']}")
            if night["promoted"] or night.get("canary"):
                active, canary_now = _store_serving(state)
                reloaded = _wait_for_policy(handle.url, active, canary_now)
                night["gateway_serves_active"] = reloaded
                echo(f"      gateway serves v{active}"
                     + ("" if canary_now is None else
                        f" and canary v{canary_now[0]} at {canary_now[1]:.0%}")
                     + f" without a restart: {reloaded}")

        if with_fleet is not None:
            summary["with_fleet"] = with_fleet(handle.url)
        step("reports")
        quarter = f"{datetime.now(UTC).year}Q{(datetime.now(UTC).month - 1) // 3 + 1}"
        with Store.open(state.store_url()) as store:
            quarterly = write_quarterly_report(state, store, fleet, quarter)
            for night in summary["nights"]:
                if night.get("proposal_id"):
                    from controlplane.reports import write_change_report

                    night["change_report"] = write_change_report(state, store, fleet,
                                                                 night["proposal_id"])
            audit_ok = store.verify_audit().ok
            active_version = store.active_policy().version
    finally:
        step("shutting the fleet down")
        handle.shutdown()

    first_promoted = next((n for n in summary["nights"] if n["promoted"] or n.get("canary")),
                          None)
    summary.update({
        "figures": figures, "day1": figures[0], "day2": figures[1],
        "promoted": first_promoted is not None,
        "active_version": active_version,
        "gateway_serves_active": all(n.get("gateway_serves_active", True)
                                     for n in summary["nights"]),
        "nightly": summary["nights"][0]["nightly"],
        "verify": (first_promoted or {}).get("verify", {}),
        "diff": (first_promoted or {}).get("diff", []),
        "predicted": (first_promoted or {}).get("predicted", {}),
        "change_report": (first_promoted or {}).get("change_report"),
        "quarterly_report": quarterly, "audit_ok": audit_ok,
        "seconds": round(step.elapsed, 1),
    })
    _print_summary(summary, echo)
    return summary


def _night_record(state: StateDir, night: int, day: str, serving: int,
                  result: dict[str, Any]) -> dict[str, Any]:
    """One night as the summary table shows it: what was proposed, gated, promoted."""
    from policies.policy import describe_diff
    from store import Store

    entries = result.get("proposals", [])
    promoted = next((e for e in entries if "active_version" in e), None)
    canary = next((e for e in entries if "canary" in e), None)
    record: dict[str, Any] = {"night": night, "window": day, "baseline_version": serving,
                              "nightly": result, "promoted": promoted is not None,
                              "canary": None if canary is None else canary["canary"],
                              "proposals": len(entries)}
    chosen = promoted or canary or (entries[0] if entries else None)
    if chosen is None:
        skipped = "; ".join(f"{h} {why}" for h, why in result.get("skipped_candidates", [])[:2])
        explore = result.get("exploration", {})
        record["headline"] = ("nothing proposed: " + (result.get("skipped") or skipped or
                                                      "the search returned no candidate")
                              + (f"; exploration: {explore.get('why')}" if explore else ""))
        return record
    pid = chosen["proposal_id"]
    with Store.open(state.store_url()) as store:
        p = store.get_proposal(pid)
        record.update({"proposal_id": pid, "lever": p.lever, "state": p.state.value,
                       "gate_verdict": p.gate_verdict.value if p.gate_verdict else None,
                       "predicted": p.predicted.record()})
        record["diff"] = describe_diff(store.get_policy(p.baseline_version).policy,
                                       store.get_policy(p.candidate_version).policy)
    if promoted is not None:
        record["active_version"] = promoted["active_version"]
    pred = record["predicted"]
    ci = pred.get("cost_per_green_pr_rel_delta_ci")
    state_text = p.state.value + ("" if canary is None else
                                  f" at {canary['canary']['share']:.0%} of new tasks")
    what = (f"{p.lever} {pid} {state_text} (gates {record['gate_verdict']}), predicted "
            f"{pred.get('cost_per_green_pr_rel_delta', 0):+.1%}"
            + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else ""))
    if pred.get("exploration"):
        e = pred["exploration"]
        what += (f"; exploration ${e['usd_per_day']:.4f}/day of a "
                 f"${e['budget_usd_per_day']:.4f}/day budget")
    record["headline"] = what
    return record


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    shares = {k.removeprefix("tier_share_"): row[k] for k in row if k.startswith("tier_share_")}
    return {"tasks": row.get("tasks"), "green_prs": row.get("green_prs"), "fpy": row.get("fpy"),
            "cost_per_green_pr": row.get("cost_per_green_pr"), "spend": row.get("spend_total"),
            "spend_shadow": row.get("spend_shadow"),
            "cache_hit_rate": row.get("cache_hit_rate"), "tier_mix": shares}


def _money(v: Any) -> str:
    return "-" if v is None else f"${v:.6f}"


def _print_summary(s: dict[str, Any], echo: Callable[[str], None]) -> None:
    echo("")
    echo("=" * 78)
    echo("Measured from the run's own telemetry (reference fleet, real serving path):")
    for i, d in enumerate(s["figures"], start=1):
        mix = ", ".join(f"{k} {v:.0%}" for k, v in d["tier_mix"].items() if v is not None)
        fpy = "-" if d["fpy"] is None else f"{d['fpy']:.3f}"
        shadow = "" if not d.get("spend_shadow") else f", shadow spend ${d['spend_shadow']:.4f}"
        echo(f"  day {i} ({d.get('served') or 'v' + str(d['version'])}): {d['tasks']} tasks, "
             f"{d['green_prs']} Green PRs, "
             f"FPY {fpy}, cost per Green PR {_money(d['cost_per_green_pr'])}{shadow}  "
             f"(tiers: {mix})")
    c1, cn = s["figures"][0].get("cost_per_green_pr"), s["figures"][-1].get("cost_per_green_pr")
    if c1 and cn:
        echo(f"  cost per Green PR, last day vs day 1: {cn / c1 - 1:+.1%}")
    for n in s["nights"]:
        echo(f"Night {n['night']} (over {n['window']}, baseline v{n['baseline_version']}): "
             f"{n['headline']}")
        for line in n.get("diff", [])[:6] if n["promoted"] or n.get("canary") else []:
            echo(f"  - {line}")
        v = n.get("verify")
        if v:
            stats = v.get("stats", {})
            realised = stats.get("rel_delta")
            predicted = n.get("predicted", {})
            ci = predicted.get("cost_per_green_pr_rel_delta_ci")
            gap = (None if realised is None or not ci else
                   realised_gap(predicted.get("cost_per_green_pr_rel_delta", realised), ci[0],
                                ci[1], realised, *(stats.get("rel_delta_ci") or (None, None))))
            inside = ("" if gap is None else
                      ", inside the predicted interval (allowing the day's noise)" if gap <= 1
                      else ", OUTSIDE the predicted interval")
            what = "canary look" if v.get("canary") else "verify"
            echo(f"  {what}: {v.get('outcome')}" + (
                "" if realised is None else f", realised {realised:+.1%}{inside}"))
        if n.get("change_report"):
            echo(f"  change report: {n['change_report']['html']}")
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
