"""Calibration of the estimator: for each lever, how often the true change of cost per Green
PR falls inside the predicted 90% interval, and how wide those intervals are.

    .venv/bin/python benchmarks/bench_calibration.py                 # default: about 7 min, 2 cores
    .venv/bin/python benchmarks/bench_calibration.py --windows 60 --per-lever 8 \\
        --truth-tasks 80000 --json /tmp/calibration.json            # a bigger run

Set-up (everything simulated, so the truth is known):
- Fleet: ``serving.testing.tiny_manifest`` (tiers S, M, L; int8 variants of S and M; the
  list_ops adapter on S). Active (logging) policy: ``synthetic_window.POLICY_YAML`` (score
  router S -> M -> L, 10% exploration, 2% shadow attempts, prefix cache on S and M).
- Telemetry: ``telemetry.synthetic`` (pass probability per tier rank, difficulty, retry
  and adapter; the per-task hidden difficulty ``latent_sd`` makes failures correlated
  within a task when the simulator has it; ``--shape name=value`` sets any field).
- Changes: per lever, ``--per-lever`` points drawn from the lever's own search space
  (``policies.levers``), applied to the active policy; points that replay exactly like the
  active policy (no change at all) are skipped. Guardrail caps are quantiles of a reference
  window's per-task spend and tokens, so some bind.
- Truth: per change, a large window (``--truth-tasks``) simulated under the change and
  under the active policy with common random numbers (``WorkloadShape.coupled``: task i,
  and its k-th try on a tier with that try's cache rolls, draw the same numbers under
  both, so a cache change moves only what was cached), priced as verify prices a realised window
  (``controlplane.loop.verify_adapter.task_outcomes``); the simulator does not enforce
  spend or token caps, so they are applied to its spans here with the gateway's rule
  (``policies.caps``: refused once the task's spend has reached the cap; the crossing call
  clipped to the tokens left). The truth's own standard error is reported beside it.
- Predicted: ``--windows`` independent "before" windows (``--tasks`` each) under the active
  policy; on each, ``experiments.estimate`` for the active policy and every change (the
  same bootstrap resamples) and ``experiments.compare``: the predicted relative change of
  cost per Green PR with its 90% interval.
- Explored (``--explored RATE``, 0.3 by default): the active policy's 2% shadows cannot
  show a variant or an adapter it never serves, so an unexplored quantization or
  distillation gets the honest always-fail/always-pass bound, which the loop never
  promotes on: it explores first (``experiments.exploration``). Both levers are measured
  again on windows logged as that exploration logs them: shadows at RATE on the int8
  variants of S and M (``routing.shadow_variants``), and the list_ops family's shadows at
  RATE on S with its adapter (``routing.families.list_ops.shadow_adapters``).

Per lever: changes (window x change pairs), coverage (share of true deltas inside the
predicted interval; "allowing the truth's noise" also counts a truth outside by less than
its own 90% noise band), the median width of the interval in percentage points, the median
true change, and whether coverage is within the aim (0.85-0.95). A truth whose standard
error is under a quarter of the predictions' own is precise enough for the exact count to
decide alone (``PRECISE_TRUTH``); a change whose truth is noisier than that at
``--truth-tasks`` is drawn again on as many paired tasks as it needs (from its measured
s.e.), up to ``--max-truth-tasks``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_window import fleet_and_policy

LEVERS = ("routing", "quantization", "cache", "guardrails", "distillation")
AIM = (0.85, 0.95)
DAY = "2026-11-20"


# ------------------------------------------------------------------------------ spans
def _shape(overrides: dict[str, Any], **kw: Any):
    from telemetry.synthetic import WorkloadShape

    names = {f.name for f in dataclasses.fields(WorkloadShape)}
    return WorkloadShape(**{k: v for k, v in {**overrides, **kw}.items() if k in names})


def _tasks_of(spans):
    """Split a span stream into tasks (the simulator ends each task with its task span)."""
    from contracts.spans import SPAN_TASK

    current: list[dict[str, Any]] = []
    for span in spans:
        current.append(span)
        if span["name"] == SPAN_TASK:
            yield current
            current = []


def apply_caps(task_spans: list[dict[str, Any]], policy, fleet) -> list[dict[str, Any]]:
    """The gateway's spend and token caps on one simulated task (the simulator has none).

    Serving calls in order; before each, ``policies.caps.task_refusal`` on what the task
    spent so far (shadow calls never count). A refused call ends its attempt and the task
    (``budget_exceeded``); the call that crosses the token cap has its output clipped to
    the tokens left (``max_tokens_left``), and a clipped answer fails its attempt.
    """
    from contracts.spans import SPAN_ATTEMPT, SPAN_CALL, SPAN_TASK, Attr, Outcome, Purpose
    from policies.caps import max_tokens_left, task_refusal
    from serving.guardrails import call_cost_usd

    g = policy.spec.guardrails
    if g.max_usd_per_task is None and g.max_tokens_per_task is None:
        return task_spans
    usd = tokens = 0.0
    kept: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # calls of the attempt being walked
    cut = clipped = False
    attempts_written = sum(1 for span in task_spans if span["name"] == SPAN_ATTEMPT)
    verified = 0  # attempts that ran whole: a cut one ends in a refusal, never verified
    for span in task_spans:
        a = span["attributes"]
        shadow = str(a.get(Attr.PURPOSE, Purpose.SERVE)) == str(Purpose.SHADOW)
        if span["name"] == SPAN_CALL and not shadow:
            if cut:
                continue
            if task_refusal(g, attempt=1, spent_usd=usd, spent_tokens=tokens) is not None:
                cut = True
                continue
            out = int(a[Attr.OUTPUT_TOKENS])
            allowed = max_tokens_left(g, int(tokens), out)
            if allowed < out:
                span = {**span, "attributes": {**a, Attr.OUTPUT_TOKENS: allowed}}
                clipped = True
                out = allowed
            tokens += int(a[Attr.INPUT_TOKENS]) + out
            usd += call_cost_usd(fleet, a[Attr.TIER], a.get(Attr.VARIANT),
                                 input_tokens=int(a[Attr.INPUT_TOKENS]),
                                 cached_input_tokens=int(a.get(Attr.CACHED_INPUT_TOKENS, 0)),
                                 output_tokens=out, cache=str(a.get(Attr.CACHE, "miss")))
            pending.append(span)
        elif span["name"] == SPAN_ATTEMPT and not shadow:
            if not pending:  # refused before its first call: the attempt never ran
                continue
            failed = cut or clipped
            kept.extend(pending)
            pending = []
            kept.append({**span, "attributes": {**a, Attr.PASSED: a[Attr.PASSED] and not failed}}
                        if failed else span)
            verified += not cut
            if failed:
                cut = True
        elif span["name"] == SPAN_TASK:
            if cut:
                attrs = {**a, Attr.OUTCOME: str(Outcome.BUDGET_EXCEEDED),
                         Attr.VERIFIER_PASSED: False}
                attrs.pop(Attr.REVIEW_ACCEPTED, None)
                # the simulator charged one verification per attempt it wrote: keep those
                # of the attempts that ran whole (a clipped one is verified and fails)
                share = verified / max(attempts_written, 1)
                if Attr.VERIFIER_COST_USD in attrs:
                    attrs[Attr.VERIFIER_COST_USD] = float(attrs[Attr.VERIFIER_COST_USD]) * share
                span = {**span, "attributes": attrs}
            kept.append(span)
        else:  # shadow attempts and their calls: evaluation spend, outside the caps
            verified += span["name"] == SPAN_ATTEMPT
            kept.append(span)
    return kept


def simulate(policy, fleet, shape) -> list[dict[str, Any]]:
    from telemetry.synthetic import simulate_spans

    out: list[dict[str, Any]] = []
    for task in _tasks_of(simulate_spans(policy, fleet, shape)):
        out.extend(apply_caps(task, policy, fleet))
    return out


def simulate_paired(policy, fleet, n: int, base_seed: int, overrides: dict[str, Any]):
    """``n`` tasks with common random numbers across policies (``WorkloadShape.coupled``:
    task i, and its k-th try on a tier, draw the same numbers under every policy)."""
    return simulate(policy, fleet, _shape(overrides, tasks=n, seed=base_seed, day=DAY,
                                          coupled=True))


def frames_of(spans: list[dict[str, Any]], tmp: Path, name: str):
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import write_spans
    from telemetry.warehouse import read_table

    path = tmp / f"{name}.jsonl"
    write_spans(iter(spans), path)
    ingest_paths([path], tmp / name)
    path.unlink()
    return tuple(read_table(tmp / name, t) for t in ("tasks", "attempts", "calls"))


# ------------------------------------------------------------------------------ truth
@dataclasses.dataclass
class Truth:
    spend: np.ndarray
    green: np.ndarray

    @property
    def cost_per_green(self) -> float:
        return float(self.spend.sum() / max(self.green.sum(), 1e-12))


def truth_of(policy, fleet, n, base_seed, overrides, tmp: Path, name: str) -> Truth:
    from controlplane.loop.verify_adapter import task_outcomes

    tasks, attempts, calls = frames_of(simulate_paired(policy, fleet, n, base_seed, overrides),
                                       tmp, name)
    order = np.argsort(tasks["task_id"].to_numpy().astype(str))
    tasks = tasks.iloc[order].reset_index(drop=True)
    spend, green, _ = task_outcomes(tasks, attempts, calls, fleet)
    return Truth(spend.astype(float), green.astype(float))


def true_delta(cand: Truth, act: Truth) -> tuple[float, float]:
    """Relative change of cost per Green PR, and its standard error (paired tasks)."""
    delta = cand.cost_per_green / act.cost_per_green - 1.0
    if len(cand.spend) != len(act.spend):
        return delta, float("nan")
    infl = (cand.spend / cand.spend.mean() - cand.green / cand.green.mean()
            - act.spend / act.spend.mean() + act.green / act.green.mean())
    return delta, float((1.0 + delta) * infl.std(ddof=1) / math.sqrt(len(infl)))


# ------------------------------------------------------------------------- candidates
@dataclasses.dataclass
class Change:
    lever: str
    kind: str  # "near": 1-3 parameters nudged from the active point; "far": a free draw
    label: str
    policy: Any
    truth: float = float("nan")
    truth_se: float = float("nan")


def _point_label(point: dict[str, Any], anchor: dict[str, Any]) -> str:
    """The parameters that differ from the active policy's point, lever prefix dropped."""
    def show(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    diff = {k.split("__", 1)[-1]: show(v) for k, v in sorted(point.items())
            if show(v) != show(anchor.get(k))}
    return " ".join(f"{k}={v}" for k, v in diff.items()) or "(anchor)"


def draw_changes(active, fleet, window, per_lever: int, seed: int, levers) -> list[Change]:
    from experiments.estimator import point_summary
    from experiments.outcomes import fit_outcome_models
    from experiments.replay import ReplayContext, replay_policy
    from experiments.search import lever_context
    from policies.levers import apply_joint, joint_anchor, joint_space
    from policies.policy import validate_against_fleet

    ctx = ReplayContext(window, fit_outcome_models(window, seed=seed))
    lctx = lever_context(window, fleet, seed=seed)
    base = point_summary(replay_policy(active, ctx))

    def key(s):
        return (round(s["cost_per_green_pr"], 9), round(s["green_prs"], 6), round(s["fpy"], 6))

    changes: list[Change] = []
    for lever in levers:
        space = joint_space((lever,), active, lctx)
        anchor = joint_anchor((lever,), active, lctx)
        rng = random.Random(f"{seed}-{lever}")
        seen = {active.content_hash}
        found = 0
        keys = list(space)
        for _ in range(400):
            if found >= per_lever or not space:
                break
            # As the search explores: small steps from where the fleet is (neighbours of
            # the active point), and free draws from the whole space, alternately.
            kind = "near" if found % 2 == 0 else "far"
            if kind == "near":
                point = dict(anchor)
                for k in rng.sample(keys, k=min(len(keys), rng.randint(1, 3))):
                    point[k] = space[k].nudge(point[k], rng)
            else:
                point = {k: p.sample(rng) for k, p in space.items()}
            try:
                policy = apply_joint((lever,), active, point, lctx, author="bench")
                validate_against_fleet(policy, fleet)
            except ValueError:
                continue
            if policy.content_hash in seen:
                continue
            seen.add(policy.content_hash)
            if key(point_summary(replay_policy(policy, ctx))) == key(base):
                continue  # changes nothing the window can show: not a change
            changes.append(Change(lever, kind, _point_label(point, anchor), policy))
            found += 1
    return changes


# ------------------------------------------------------------------------------ main
Z90 = 1.6449  # two-sided 90% normal quantile: the truth's own noise band


def _median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.median(values)) if values else float("nan")


# A truth whose standard error is under this share of the predictions' own (the median
# half-width / Z90) is precise enough that the coverage counting it as exact decides the
# verdict by itself: a 90% interval then covers a noisy truth at least 0.889 of the time
# where it would cover an exact one 0.90 of the time.
PRECISE_TRUTH = 0.25


def precise_truth_se(median_width: float) -> float:
    """The truth s.e. at or under which the exact count decides alone (``PRECISE_TRUTH`` of
    the predictions' own s.e.: the median half-width / Z90)."""
    return PRECISE_TRUTH * (median_width / 2) / Z90


def truth_score(low: float, high: float, truth: float, truth_se: float) -> dict[str, Any]:
    """A row's scoring against a truth: inside the interval, and inside allowing the truth's
    own 90% noise band (outside by no more than that: undecidable at this truth size)."""
    outside = max(low - truth, truth - high, 0.0)
    return {"truth": truth, "truth_se": truth_se, "inside": bool(low <= truth <= high),
            "inside_within_noise": bool(outside <= Z90 * truth_se)}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Coverage counts the simulated truth as exact; "within noise" also counts a truth
    outside the interval by less than its own 90% noise band (undecidable at this truth
    size). The true coverage lies between the two. The aim is met when both are within it,
    or when the truth is precise (``PRECISE_TRUTH``) and the exact count is; "undecided"
    when they disagree on a noisy truth."""
    cov = sum(r["inside"] for r in rows) / len(rows)
    lenient = sum(r["inside_within_noise"] for r in rows) / len(rows)
    width = _median([r["high"] - r["low"] for r in rows])
    truth_se = _median([r["truth_se"] for r in rows])
    precise = bool(truth_se <= precise_truth_se(width))
    lo, hi = AIM
    if lo <= cov <= hi and (lo <= lenient <= hi or precise):
        verdict = "yes"
    elif lenient < lo or (precise and cov < lo):
        verdict = "no: too narrow"
    elif cov > hi and _median([r["support"] for r in rows]) < 1.0:
        # Support < 1: the windows never showed what the change runs, so the interval is the
        # honest always-fail/always-pass bound; the loop explores before it decides.
        verdict = "bound: unexplored"
    elif cov > hi:
        verdict = "no: too wide"
    else:
        verdict = "undecided (truth noise)"
    return {"pairs": len(rows), "coverage": cov, "coverage_within_noise": lenient,
            "median_width": width,
            "median_abs_error": _median([abs(r["predicted"] - r["truth"]) for r in rows]),
            "median_truth": _median([r["truth"] for r in rows]),
            "median_truth_se": truth_se, "precise_truth": precise,
            "median_support": _median([r["support"] for r in rows]),
            "verdict": verdict}


def main(argv=None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="autopilot-calibration-"))
    try:
        return run(argv, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(argv, tmp: Path) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=30, help="before windows")
    ap.add_argument("--tasks", type=int, default=3000, help="tasks per before window")
    ap.add_argument("--per-lever", type=int, default=4, help="changes drawn per lever")
    ap.add_argument("--truth-tasks", type=int, default=30000,
                    help="tasks per truth window (paired)")
    ap.add_argument("--max-truth-tasks", type=int, default=300000,
                    help="a change whose truth is too noisy to decide its coverage is drawn "
                         "again on as many tasks as that needs, up to this (0: never)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--latent-sd", type=float, default=1.0,
                    help="per-task hidden difficulty (correlated failures), if the simulator "
                         "has it")
    ap.add_argument("--shape", action="append", default=[], metavar="NAME=VALUE",
                    help="any other WorkloadShape field (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explore-variants", type=float, default=0.0, metavar="RATE",
                    help="log as an exploration for a quantization would: shadows at RATE, "
                         "run on the int8 variants of S and M (routing.shadow_variants)")
    ap.add_argument("--explore-adapters", type=float, default=0.0, metavar="RATE",
                    help="log as an exploration for a distillation would: the list_ops "
                         "family's shadows at RATE, on S with the list-ops-v1 adapter "
                         "(the family's routing.shadow_adapters)")
    ap.add_argument("--explored", type=float, default=0.3, metavar="RATE",
                    help="then measure quantization and distillation again on windows logged "
                         "as the loop's exploration for each logs them (as "
                         "--explore-variants RATE and --explore-adapters RATE): the windows "
                         "the loop decides them on. 0: skip")
    ap.add_argument("--model-refits", type=int, default=None, metavar="K",
                    help="half-sample refits of the outcome model per window "
                         "(experiments.replay.attach_model_refits; default: the estimator's "
                         "own, MODEL_REFITS; 0: none)")
    ap.add_argument("--json", default=None, help="write every (window, change) row here")
    args = ap.parse_args(argv)
    if args.model_refits is None:
        from experiments.replay import MODEL_REFITS

        args.model_refits = MODEL_REFITS

    from telemetry.synthetic import WorkloadShape

    t_start = time.perf_counter()
    fleet, active = fleet_and_policy()
    fields = {f.name: f for f in dataclasses.fields(WorkloadShape)}
    overrides: dict[str, Any] = {}
    if "latent_sd" in fields:
        overrides["latent_sd"] = args.latent_sd
    for item in args.shape:
        name, _, value = item.partition("=")
        if name not in fields:
            ap.error(f"WorkloadShape has no field {name!r} (fields: {', '.join(fields)})")
        overrides[name] = type(fields[name].default)(value) if not isinstance(
            fields[name].default, bool) else value.lower() in ("1", "true", "yes", "on")
    levers = [x for x in args.levers.split(",") if x]
    print(f"calibration benchmark: {args.windows} windows x {args.tasks} tasks, "
          f"{args.per_lever} changes per lever, truth {args.truth_tasks} paired tasks, "
          f"shape {overrides or 'default'}, level {args.level}", flush=True)

    # (row name, lever, logging policy): the active policy as it logs, then (unless the
    # exploration flags set it already) each lever the window cannot show without
    # exploring, logged as the loop's exploration for it logs.
    passes = [(lever, lever, _exploring(active, args.explore_variants, args.explore_adapters))
              for lever in levers]
    if args.explored > 0 and not (args.explore_variants or args.explore_adapters):
        if "quantization" in levers:
            passes.append(("quantization, explored", "quantization",
                           _exploring(active, args.explored, 0.0)))
        if "distillation" in levers:
            passes.append(("distillation, explored", "distillation",
                           _exploring(active, 0.0, args.explored)))
    changes: list[Change] = []
    rows: list[dict[str, Any]] = []
    # Passes logged by the same policy share their windows: (logging policy, [(name, lever)]).
    by_logging: dict[str, tuple[Any, list[tuple[str, str]]]] = {}
    for name, lever, logging in passes:
        by_logging.setdefault(logging.content_hash, (logging, []))[1].append((name, lever))
    for k, (logging, named) in enumerate(by_logging.values()):
        if len(by_logging) > 1:
            print(f"windows logged by {', '.join(n for n, _ in named)}:", flush=True)
        # Each pass in its own folder: ingesting into a used one would add to its tables.
        (tmp / f"pass{k}").mkdir()
        got_changes, got_rows = _measure(logging, fleet, named, args, overrides,
                                         tmp / f"pass{k}")
        changes += got_changes
        rows += got_rows
    names = [name for name, _, _ in passes]

    # The table.
    print()
    print(f"Coverage of the predicted {args.level:.0%} interval of the change of cost per "
          f"Green PR (aim {AIM[0]:.2f}-{AIM[1]:.2f})")
    print("| lever | changes (kinds x windows) | coverage | coverage allowing the truth's "
          "noise | median width (pts) | median abs error (pts) | median true change | "
          "median support | aim met |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name in names:
        mine = [r for r in rows if r["lever"] == name]
        if not mine:
            print(f"| {name} | 0 | - | - | - | - | - | - | no change to draw |")
            continue
        summary[name] = s = _summarise(mine)
        distinct = len({r["change"] for r in mine})
        kinds = "+".join(f"{sum(1 for c in changes if c.lever == name and c.kind == k)} {k}"
                         for k in ("near", "far")
                         if any(c.lever == name and c.kind == k for c in changes))
        print(f"| {name} | {len(mine)} ({kinds} x {len(mine) // max(distinct, 1)}) "
              f"| {s['coverage']:.2f} | {s['coverage_within_noise']:.2f} "
              f"| {100 * s['median_width']:.1f} | {100 * s['median_abs_error']:.1f} "
              f"| {100 * s['median_truth']:+.1f}% | {s['median_support']:.3f} "
              f"| {s['verdict']} |")
    print()
    print("Per change: coverage over the windows, true change +- its s.e. (pts), median "
          "predicted change and interval width (pts), median support:")
    for c in changes:
        mine = [r for r in rows if r["change"] == c.label and r["lever"] == c.lever]
        cov = sum(r["inside"] for r in mine) / max(len(mine), 1)
        print(f"  {c.lever:<24} {c.kind:<4} {cov:4.2f}  truth {100 * c.truth:+6.1f} +- "
              f"{100 * c.truth_se:.2f}  predicted "
              f"{100 * _median([r['predicted'] for r in mine]):+6.1f} width "
              f"{100 * _median([r['high'] - r['low'] for r in mine]):5.1f} support "
              f"{_median([r['support'] for r in mine]):.2f}  {c.label}")
    seconds = time.perf_counter() - t_start
    machine = (f"{os.cpu_count()} cores, {platform.machine()}, Python "
               f"{platform.python_version()}")
    print(f"\n{seconds:.0f} s on {machine}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "shape": overrides, "seconds": seconds, "machine": machine,
            "summary": summary, "rows": rows}, indent=1, default=str))
    return 0


def _exploring(active, variants: float, adapters: float):
    """The active policy logging as an exploration would: shadows at ``variants`` on the
    int8 variants of S and M (a quantization's), the list_ops family's shadows at
    ``adapters`` on S with the list-ops-v1 adapter (a distillation's)."""
    if variants > 0:
        active = active.evolve(author="bench", routing=active.spec.routing.model_copy(update={
            "shadow_rate": variants, "shadow_variants": {"S": "int8", "M": "int8"}}))
    if adapters > 0:
        routing = active.spec.routing.model_dump(mode="json")
        entry = routing.setdefault("families", {}).setdefault("list_ops", {})
        entry.update(shadow_rate=adapters, shadow_adapters={"S": "list-ops-v1"})
        active = active.evolve(author="bench", routing=routing)
    return active


def _measure(active, fleet, named: list[tuple[str, str]], args, overrides, tmp: Path
             ) -> tuple[list[Change], list[dict[str, Any]]]:
    """Changes of the ``named`` levers (row name, lever) drawn from ``active``, their truths,
    and the predictions on windows ``active`` logged: (changes, rows), each under its row
    name."""
    from experiments.estimator import bootstrap_weights, compare, estimate
    from experiments.outcomes import fit_outcome_models
    from experiments.replay import ReplayContext, attach_model_refits
    from experiments.window import build_window

    # Changes, drawn on a reference window of the active policy.
    ref = build_window(*frames_of(simulate(active, fleet, _shape(
        overrides, tasks=args.tasks, seed=900_000 + args.seed, day=DAY)), tmp, "ref"), fleet)
    row_name = {lever: name for name, lever in named}
    changes = draw_changes(active, fleet, ref, args.per_lever, args.seed,
                           [lever for _, lever in named])
    for c in changes:
        c.lever = row_name[c.lever]
    print(f"{len(changes)} changes: " + ", ".join(
        f"{name} {sum(c.lever == name for c in changes)}" for name, _ in named), flush=True)

    # Truth per change: paired with the active policy's truth window.
    t0 = time.perf_counter()
    base_seed = 5_000_000 + 100_000 * args.seed
    act_truth = truth_of(active, fleet, args.truth_tasks, base_seed, overrides, tmp, "t-act")
    for i, c in enumerate(changes):
        c.truth, c.truth_se = true_delta(
            truth_of(c.policy, fleet, args.truth_tasks, base_seed, overrides, tmp, f"t-{i}"),
            act_truth)
    print(f"truth: {len(changes) + 1} paired windows in {time.perf_counter() - t0:.0f} s "
          f"(active ${act_truth.cost_per_green:.5f} per Green PR)", flush=True)

    # Predictions on independent before windows.
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for w in range(args.windows):
        seed = 1_000 + 1_000 * args.seed + w
        frames = frames_of(simulate(active, fleet, _shape(overrides, tasks=args.tasks,
                                                          seed=seed, day=DAY)), tmp, f"w{w}")
        window = build_window(*frames, fleet)
        ctx = ReplayContext(window, fit_outcome_models(window, seed=w))
        if args.model_refits:
            attach_model_refits(ctx, args.model_refits, seed=w)
        weights = bootstrap_weights(window.n, args.bootstrap, w)
        act = estimate(active, window, context=ctx, weights=weights, level=args.level)
        for c in changes:
            est = estimate(c.policy, window, context=ctx, weights=weights, level=args.level)
            d = compare(est, act).cost_per_green_pr
            rows.append({"window": w, "lever": c.lever, "kind": c.kind, "change": c.label,
                         "predicted": d.point, "low": d.low, "high": d.high,
                         "support": est.support,
                         **truth_score(d.low, d.high, c.truth, c.truth_se)})
        if (w + 1) % 5 == 0 or w + 1 == args.windows:
            print(f"  window {w + 1}/{args.windows} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    _refine_truths(changes, rows, active, fleet, args, overrides, tmp, base_seed)
    return changes, rows


def truth_tasks_needed(n: int, truth_se: float, median_width: float) -> int | None:
    """The truth size at which a truth of standard error ``truth_se`` at ``n`` tasks becomes
    precise (``PRECISE_TRUTH`` of the predictions' own s.e., the median half-width / Z90),
    with a tenth to spare; None when it already is (or cannot be read)."""
    target = precise_truth_se(median_width)
    if not (truth_se > target > 0):
        return None
    return math.ceil(1.1 * n * (truth_se / target) ** 2)


def _refine_truths(changes: list[Change], rows: list[dict[str, Any]], active, fleet, args,
                   overrides, tmp: Path, base_seed: int) -> None:
    """Draw again, on more paired tasks, the truth of each change too noisy to decide its
    coverage: the size comes from the truth's measured s.e. and the predictions' widths
    (``truth_tasks_needed``), up to ``--max-truth-tasks``, and the change's rows are scored
    again against it. A cache change moves the cost by a point or less, so its truth needs
    more tasks than a routing change's."""
    if args.max_truth_tasks <= args.truth_tasks:
        return
    rows_of = [[r for r in rows if r["change"] == c.label and r["lever"] == c.lever]
               for c in changes]
    need: dict[int, int] = {}
    for i, c in enumerate(changes):
        n = truth_tasks_needed(args.truth_tasks, c.truth_se,
                               _median([r["high"] - r["low"] for r in rows_of[i]]))
        if n is not None:
            need[i] = min(n, args.max_truth_tasks)
    if not need:
        return
    size = max(need.values())
    t0 = time.perf_counter()
    act_truth = truth_of(active, fleet, size, base_seed, overrides, tmp, f"t-act-{size}")
    for i in need:
        c = changes[i]
        before = c.truth_se
        c.truth, c.truth_se = true_delta(
            truth_of(c.policy, fleet, size, base_seed, overrides, tmp, f"t-{i}-{size}"),
            act_truth)
        for r in rows_of[i]:
            r.update(truth_score(r["low"], r["high"], c.truth, c.truth_se))
        print(f"  truth of {c.lever} {c.label}: s.e. {100 * before:.2f} -> "
              f"{100 * c.truth_se:.2f} pts", flush=True)
    print(f"truth: {len(need)} changes drawn again on {size} paired tasks in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
