"""``autopilot proposals``, ``policy rollback`` and ``report``: the owner's side of the loop.

Registered on the main ``autopilot`` group by ``controlplane.cli``; thin shells over
``controlplane.loop`` (rules), the store (records) and ``controlplane.reports``.
"""

from __future__ import annotations

import math
from typing import Any

import click

from controlplane.cli.common import Context

__all__ = ["policy_rollback", "proposals", "report"]


def _proposal_row(p: Any) -> dict[str, Any]:
    predicted = p.predicted
    return {
        "proposal_id": p.proposal_id,
        "lever": p.lever,
        "state": p.state.value,
        "gates": p.gate_verdict.value if p.gate_verdict else None,
        "candidate": f"v{p.candidate_version}",
        "baseline": f"v{p.baseline_version}",
        "window": p.window,
        "predicted_rel_delta": predicted.cost_per_green_pr_rel_delta,
        "risk": predicted.risk,
        "created_by": p.created_by,
        "created_at": p.created_at,
    }


@click.group()
def proposals() -> None:
    """Proposed policy changes: list, show, approve, reject."""


@proposals.command("list")
@click.option("--state", "state_filter", default=None,
              help="Only proposals in this state (e.g. awaiting_approval).")
@click.pass_obj
def proposals_list(obj: Context, state_filter: str | None) -> None:
    """Every proposal, oldest first."""
    rows = [_proposal_row(p) for p in obj.store().list_proposals(state_filter)]
    if not rows:
        obj.emit([] if obj.as_json else "no proposals")
        return
    obj.emit(rows, title="proposals")


@proposals.command("show")
@click.argument("proposal_id")
@click.pass_obj
def proposals_show(obj: Context, proposal_id: str) -> None:
    """One proposal: the change in words, predictions, gates, approval."""
    from controlplane.reports import gather_change_report

    r = gather_change_report(obj.state, obj.store(), obj.fleet(), proposal_id)
    if obj.as_json:
        obj.emit({"proposal": r.proposal, "diff": r.diff_lines, "predicted": r.predicted.record(),
                  "gates": r.gates, "approval": r.approval, "verification": r.verification})
        return
    p = r.proposal
    click.echo(f"{p['proposal_id']}  lever={p['lever']}  state={p['state']}  "
               f"gates={p['gate_verdict'] or '-'}  v{p['baseline_version']} -> "
               f"v{p['candidate_version']}  window={p['window']}")
    click.echo("change:")
    for line in r.diff_lines or ["(no change in spec)"]:
        click.echo(f"  {line}")
    obj.emit([{"figure": name, "value": point, "interval": ci}
              for name, point, ci in r.predicted.figures()]
             + [{"figure": "risk", "value": r.predicted.risk, "interval": None}],
             title="predicted")
    if r.gates:
        obj.emit(r.gates, title="gates")
    click.echo(f"approval: {r.approval or 'not decided'}")


def _decide(obj: Context, proposal_id: str, approver: str, reason: str, decision: str) -> None:
    from controlplane.loop.approvals import authorise
    from controlplane.loop.waiting import resume_waiting_flow

    store = obj.store()
    proposal = store.get_proposal(proposal_id)
    settings = obj.state.settings()
    approver = authorise(approver, author=proposal.created_by, owners=settings.platform_owners)
    record = store.record_decision(proposal_id, approver=approver, decision=decision,
                                   reason=reason)
    resumed = resume_waiting_flow(obj.state, store, proposal_id, approver=approver,
                                  approve=decision == "approve", reason=reason)
    obj.emit({"proposal_id": proposal_id, "decision": record.decision.value,
              "approver": record.approver, "reason": record.reason,
              "nightly_flow": resumed})


@proposals.command("approve")
@click.argument("proposal_id")
@click.option("--as", "approver", required=True, help="Your identity (a platform owner).")
@click.option("--reason", default="approved", show_default=True)
@click.pass_obj
def proposals_approve(obj: Context, proposal_id: str, approver: str, reason: str) -> None:
    """Approve a proposal awaiting approval (platform owners; never its author)."""
    _decide(obj, proposal_id, approver, reason, "approve")


@proposals.command("reject")
@click.argument("proposal_id")
@click.option("--as", "approver", required=True, help="Your identity (a platform owner).")
@click.option("--reason", required=True, help="Why (kept in the audit log and the report).")
@click.pass_obj
def proposals_reject(obj: Context, proposal_id: str, approver: str, reason: str) -> None:
    """Reject a proposal awaiting approval."""
    _decide(obj, proposal_id, approver, reason, "reject")


@click.command("rollback")
@click.option("--as", "actor", required=True, help="Your identity (a platform owner).")
@click.option("--reason", required=True)
@click.pass_obj
def policy_rollback(obj: Context, actor: str, reason: str) -> None:
    """Restore the previously active policy, atomically (the gateway reloads it)."""
    from controlplane.loop.approvals import authorise
    from controlplane.loop.promotion import rollback_active

    settings = obj.state.settings()
    actor = authorise(actor, author="", owners=settings.platform_owners)
    record = rollback_active(obj.store(), actor=actor, reason=reason)
    obj.emit({"active_version": record.version, "previous_version": record.previous_version,
              "proposal_id": record.proposal_id, "reason": record.reason})


@click.group()
def report() -> None:
    """Change reports, the quarterly review (Markdown and standalone HTML) and the
    calibration record."""


@report.command("change")
@click.argument("proposal_id")
@click.pass_obj
def report_change(obj: Context, proposal_id: str) -> None:
    """Write the change report of one proposal."""
    from controlplane.reports import write_change_report

    obj.emit(write_change_report(obj.state, obj.store(), obj.fleet(), proposal_id),
             title=f"change report {proposal_id}")


@report.command("quarterly")
@click.argument("quarter")
@click.pass_obj
def report_quarterly(obj: Context, quarter: str) -> None:
    """Write the quarterly review, e.g. ``autopilot report quarterly 2026Q4``."""
    from controlplane.reports import quarter_bounds, write_quarterly_report

    try:
        quarter_bounds(quarter)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="QUARTER") from None
    obj.emit(write_quarterly_report(obj.state, obj.store(), obj.fleet(), quarter),
             title=f"quarterly report {quarter.upper()}")


def _json_numbers(value: Any) -> Any:
    """Numbers stay numbers in ``--json``; an infinite one (no bound) becomes null."""
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "+inf" if value > 0 else "-inf"
    return f"{100 * value:+.1f}"


def _pct_interval(point: float | None, low: float | None, high: float | None) -> str:
    if point is None:
        return "-"
    if low is None or high is None:
        return _pct(point)
    return f"{_pct(point)} [{_pct(low)},{_pct(high)}]"


@report.command("calibration")
@click.option("--lever", default=None, help="Only this lever's record.")
@click.pass_obj
def report_calibration(obj: Context, lever: str | None) -> None:
    """Predicted against realised for every verify look, and per lever: coverage, misses
    and the interval inflation the nightly applies (``controlplane.loop.calibration``)."""
    from controlplane.loop.calibration import LEVEL, calibration_summary

    records = obj.store().calibration_records(lever=lever)
    summary = calibration_summary(records)
    if obj.as_json:
        obj.emit(_json_numbers({"level": LEVEL, "records": [r.as_dict() for r in records],
                          "levers": [s.as_dict() for s in summary]}))
        return
    if not records:
        click.echo("no calibration record yet (verify writes one row per look at a promoted "
                   "change)")
        return
    obj.emit([{"proposal": r.proposal_id, "lever": r.lever, "look": r.look,
               "predicted %": _pct_interval(r.predicted, r.predicted_low, r.predicted_high),
               "realised %": _pct_interval(r.realised, r.realised_low, r.realised_high),
               "inside": "-" if r.inside is None else ("yes" if r.inside else "NO"),
               "widen": f"{r.widen:.2f}x", "outcome": r.outcome, "window": r.window}
              for r in records],
             title="calibration: predicted vs realised change of cost per Green PR (%)")
    obj.emit([{"lever": s.lever, "changes": s.changes, "inside": s.inside,
               "misses": s.misses,
               "coverage": "-" if s.coverage is None else f"{s.coverage:.2f}",
               "median width (pts)": ("-" if s.median_width is None
                                      else f"{100 * s.median_width:.1f}"),
               "worst miss (half-widths)": ("-" if s.worst_miss is None
                                            else f"{s.worst_miss:.2f}"),
               "next factor": f"{s.factor:.2f}x"} for s in summary],
             title=f"per lever (aim: coverage near {LEVEL:.2f}; latest look of each change)")


@click.command()
@click.option("--since", help="First day of the window (default: yesterday, UTC).")
@click.option("--until", help="Last day of the window (default: --since).")
@click.option("--lever", "levers", multiple=True,
              help="Lever to search (repeatable; default: all).")
@click.option("--gateway-url", default=None, help="A running gateway to gate through "
              "(default: start a fleet for the gates).")
@click.option("--approver", default=None,
              help="Approve as this platform owner without waiting (non-interactive runs).")
@click.option("--dry-run", is_flag=True, help="Propose and gate; never promote.")
@click.pass_obj
def nightly(obj: Context, since: str | None, until: str | None, levers: tuple[str, ...],
            gateway_url: str | None, approver: str | None, dry_run: bool) -> None:
    """Run the nightly flow once, now (Prefect)."""
    from controlplane.loop.waiting import prefect_environment

    obj.require_init()
    prefect_environment(obj.state)
    from controlplane.flows import nightly as nightly_flow

    result = nightly_flow(state_dir=str(obj.state.root), since=since, until=until or since,
                          levers=list(levers) or "all", gateway_url=gateway_url,
                          approver=approver, dry_run=dry_run)
    obj.emit(result)


@click.command()
@click.option("--since", help="First day of the promoted policy's window.")
@click.option("--until", help="Last day.")
@click.pass_obj
def verify(obj: Context, since: str | None, until: str | None) -> None:
    """Run the verify flow once: realised against predicted, rollback on a regression."""
    from controlplane.loop.waiting import prefect_environment

    obj.require_init()
    prefect_environment(obj.state)
    from controlplane.flows import verify as verify_flow

    obj.emit(verify_flow(state_dir=str(obj.state.root), since=since, until=until))


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the schedules; serve nothing.")
@click.option("--work-pool", "work_pool", default=None, metavar="NAME",
              help="Deploy to this Prefect process work pool (created when missing) and exit; "
              "`autopilot worker --work-pool NAME` runs the flows. Default: serve them from "
              "this process until interrupted.")
@click.pass_obj
def schedule(obj: Context, dry_run: bool, work_pool: str | None) -> None:
    """Schedule the nightly (cron) and quarterly deployments, and verify after each nightly."""
    from controlplane.deploy import deploy_to_work_pool, serve_deployments

    obj.require_init()
    if work_pool is None:
        specs = serve_deployments(obj.state, dry_run=dry_run)
    else:
        specs, pool = deploy_to_work_pool(obj.state, work_pool, dry_run=dry_run)
    rows = [{"deployment": s.name, "cron": s.cron or "after each nightly run",
             "timezone": s.timezone} for s in specs]
    if work_pool is None or obj.as_json:
        obj.emit(rows if work_pool is None else
                 {"work_pool": work_pool, "pool": pool, "deployments": rows},
                 title="schedules")
        return
    obj.emit(rows, title=f"schedules on work pool {work_pool} ({pool})")
    if not dry_run:
        click.echo(f"start the worker (same PREFECT_API_URL): autopilot worker --work-pool "
                   f"{work_pool}   (or: prefect worker start --pool {work_pool})")


@click.command()
@click.option("--work-pool", "work_pool", required=True, metavar="NAME",
              help="The process work pool `autopilot schedule --work-pool` deployed to.")
@click.pass_obj
def worker(obj: Context, work_pool: str) -> None:
    """Run a Prefect process worker for the loop's work pool in this venv (until stopped)."""
    import os

    from controlplane.deploy import require_prefect_server, worker_command
    from controlplane.loop.waiting import prefect_environment

    obj.require_init()
    prefect_environment(obj.state)
    require_prefect_server()
    command = worker_command(work_pool)
    os.execv(command[0], command)  # the worker owns the terminal and its signals


COMMANDS = [proposals, report, nightly, verify, schedule, worker]
