"""``autopilot distill``: the distillation lever by hand (docs/distillation.md).

Registered on the main ``autopilot`` group by ``controlplane.cli``; a thin shell over
``controlplane.loop.distill.run_distill`` and ``experiments.distill_candidates``.
"""

from __future__ import annotations

from typing import Any

import click

from controlplane.cli.common import Context

__all__ = ["distill"]


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@click.command()
@click.option("--family", required=False, help="Task family to distil.")
@click.option("--fleet", "fleet_file", type=click.Path(exists=True, dir_okay=False),
              help="Fleet manifest (default: the state directory's fleet.yaml).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where the adapter, the manifest copy and the report go "
                   "(default: <state>/distill/<adapter>/).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False),
              help="Active policy YAML (default: the state's active policy, else the starter).")
@click.option("--steps", type=click.IntRange(1, 100_000), default=None,
              help="Optimizer steps (default: settings, 2000).")
@click.option("--teacher", type=click.IntRange(0, 100_000), default=None,
              help="Top-tier verified answers to add to the collected set (train split).")
@click.option("--max-examples", type=click.IntRange(1, 1_000_000), default=None)
@click.option("--eval-tasks", type=click.IntRange(0, 100_000), default=None,
              help="Held-out tasks for the before/after pass rate (default 200).")
@click.option("--seed", type=int, default=None)
@click.option("--executor", type=click.Choice(["ray", "inline"]), default="ray",
              show_default=True, help="Run the job as a Ray task, or in this process.")
@click.option("--serve-check/--no-serve-check", default=True, show_default=True,
              help="Start the variant through vLLM and generate once with the adapter.")
@click.option("--adopt", is_flag=True,
              help="Pin the adapter in the state's fleet.yaml and record a proposal.")
@click.option("--candidates", "list_candidates", is_flag=True,
              help="Only rank the families of the state's telemetry window; train nothing.")
@click.option("--since", default=None, help="Window start day (YYYY-MM-DD).")
@click.option("--until", default=None, help="Window end day (YYYY-MM-DD).")
@click.pass_obj
def distill(obj: Context, family: str | None, fleet_file: str | None, out_dir: str | None,
            policy_file: str | None, steps: int | None, teacher: int | None,
            max_examples: int | None, eval_tasks: int | None, seed: int | None,
            executor: str, serve_check: bool, adopt: bool, list_candidates: bool,
            since: str | None, until: str | None) -> None:
    """Distil a family's verified outputs into a LoRA adapter for the small tier."""
    from controlplane.loop.distill import run_distill

    state = obj.state if obj.state.exists() else None
    if list_candidates:
        obj.emit(_candidates(obj, since, until), title="distillation candidates")
        return
    if not family:
        raise click.UsageError("--family is required (or --candidates to rank families)")
    if fleet_file is None and state is None:
        raise click.UsageError("no state directory: pass --fleet (and --out)")
    echo = (lambda _m: None) if obj.as_json else click.echo
    report = run_distill(family=family, state=state, fleet_path=fleet_file, out_dir=out_dir,
                         policy_path=policy_file, steps=steps, teacher=teacher,
                         max_examples=max_examples, eval_tasks=eval_tasks, seed=seed,
                         executor=executor, serve_check=serve_check, adopt=adopt,
                         since=since, until=until, echo=echo)
    if obj.as_json:
        obj.emit(report)
        return
    est = report.get("estimate") or {}
    deltas = (est.get("deltas") or {}).get("cost_per_green_pr_rel") or {}
    row: dict[str, Any] = {
        "family": report["family"],
        "adapter": f"{report['tier']}/{report['variant']}+{report['adapter']}",
        "examples": report["examples"]["used"],
        "pass rate before": _fmt_rate(report["pass_rate_before"]),
        "pass rate after": _fmt_rate(report["pass_rate_after"]),
        "held-out tasks": report["heldout"],
        "manifest": report["manifest"],
        "candidate policy": report["candidate"],
    }
    if deltas:
        row["est. cost/Green PR change"] = (f"{100 * deltas['point']:+.1f}% "
                                            f"[{100 * deltas['low']:+.1f}%, "
                                            f"{100 * deltas['high']:+.1f}%]")
    obj.emit(row, title="distillation")


def _candidates(obj: Context, since: str | None, until: str | None) -> list[dict[str, Any]]:
    from controlplane.loop.distill import active_policy_of, excluded_families
    from experiments.distill_candidates import distill_candidates
    from experiments.window import load_estimator_window

    obj.require_init()
    settings = obj.state.settings()
    ds = settings.distillation
    active = active_policy_of(obj.state, None)
    tasks, attempts, calls = load_estimator_window(obj.state.telemetry_dir, since, until)
    rows = distill_candidates(tasks, attempts, calls, obj.fleet(), target_tier=ds.target_tier,
                              target_pass_rate=ds.target_pass_rate,
                              min_upper_share=ds.min_upper_share,
                              default_verifier_cost_usd=settings.default_verifier_cost_usd,
                              exclude_families=excluded_families(active, ds))
    keys = ("family", "tasks", "spend_usd", "upper_share", "top_share", "cost_per_green_pr",
            "cost_per_green_pr_after", "saving_usd", "flaky_share", "qualifies", "reason")
    return [{k: r.as_dict()[k] for k in keys} for r in rows]
