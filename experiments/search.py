"""The search: Ray Tune (Optuna as the search algorithm) over each lever and the levers
jointly, minimising the estimated cost per Green PR subject to non-inferiority.

A Tune trial costs seconds of fixed overhead, so each trial evaluates many candidates:
the point Optuna proposes plus ``per_trial - 1`` neighbours of it, each replayed in full
(vectorised numpy, point estimates). A trial reports its best objective back to Optuna;
all evaluated points come back to the driver, which ranks them, estimates the best
``candidates`` with bootstrap intervals and paired deltas against the active policy on the
same window, and marks each feasible and with a risk level.

Feasible: Green PRs non-inferior within ``gates.non_inferiority_margin`` (relative), judged
on the interval's lower bound; first-pass yield is reported always and constrains only when
the owner sets ``gates.fpy_margin`` (absolute), since a cheap-first cascade lowers FPY by
construction while raising Green PRs. Ranked (and so chosen) by the pessimistic end of the
interval: the high end of the relative change of cost per Green PR, the least saving the
interval admits; the point breaks ties (``rank_key``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.estimator import (
    Deltas,
    Estimate,
    bootstrap_weights,
    compare,
    estimate,
    point_summary,
)
from experiments.replay import ReplayContext, attach_model_refits, replay_policy
from experiments.window import Window, as_window

__all__ = [
    "Candidate",
    "SearchResult",
    "escalation_seeds",
    "feasibility_reasons",
    "lever_context",
    "objective",
    "rank_key",
    "risk_level",
    "risk_reasons",
    "search_candidates",
]

INFEASIBLE_PENALTY = 1e3
# Below this share of a candidate's attempts on observed states its estimate leans on the
# outcome model where the window is silent: it cannot be promoted, only explored.
MIN_SUPPORT = 0.99
# How many promising candidates held back only by support the result keeps for exploration.
UNSUPPORTED_KEPT = 6
AUTHOR = "autopilot-search"
# Escalation orders replayed per family to see where a routing of its own could save
# (cheapest orders first: single tiers, then pairs ...).
SAVING_PROBES = 16
# Caps that end more than this share of the window's tasks budget_exceeded (beyond the
# active policy) make a candidate's saving one fitted on the tasks it cuts.
CUT_SHARE = 0.001


def _number(value: float) -> float | None:
    """JSON has no infinity: an unbounded end is null."""
    return float(value) if np.isfinite(value) else None


def _interval_numbers(interval) -> dict[str, float | None]:
    return {k: _number(v) for k, v in interval.as_dict().items()}


@dataclass
class Candidate:
    """One ranked proposal: the policy, the lever(s) that made it, and its evidence."""

    policy: Any
    lever: str
    point: dict[str, Any]
    estimate: Estimate
    deltas: Deltas
    feasible: bool
    risk: str
    reasons: list[str] = field(default_factory=list)  # why not feasible
    risk_reasons: list[str] = field(default_factory=list)  # why not risk "low"

    def record(self) -> dict[str, Any]:
        """The numbers form (``whatif --json``, ``whatif.json``): every figure a number,
        each interval ``{point, low, high}`` (null: unbounded), deltas relative for Green
        PRs and cost per Green PR, absolute for FPY. ``rank_by`` is the figure the ranking
        uses: the high end of the relative change of cost per Green PR."""
        e, d = self.estimate, self.deltas
        return {
            "lever": self.lever,
            "hash": self.policy.content_hash[:12],
            "cost_per_green_pr": _interval_numbers(e.cost_per_green_pr),
            "green_prs": _interval_numbers(e.green_prs),
            "fpy": _interval_numbers(e.fpy),
            "deltas": {"cost_per_green_pr_rel": _interval_numbers(d.cost_per_green_pr),
                       "green_prs_rel": _interval_numbers(d.green_prs),
                       "fpy_abs": _interval_numbers(d.fpy)},
            "rank_by": _number(d.cost_per_green_pr.high),
            "support": float(e.support),
            "level": float(e.level),
            "budget_exceeded": float(e.budget_exceeded),
            "feasible": self.feasible,
            "risk": self.risk,
            "reasons": list(self.reasons),
            "risk_reasons": list(self.risk_reasons),
        }

    def summary(self) -> dict[str, Any]:
        """One human line (strings with intervals): the benchmarks print it."""
        e, d = self.estimate, self.deltas
        return {
            "lever": self.lever,
            "hash": self.policy.content_hash[:12],
            "cost_per_green_pr": e.cost_per_green_pr.point,
            "d_cost_per_green": f"{100 * d.cost_per_green_pr.point:+.1f}% "
                                f"[{100 * d.cost_per_green_pr.low:+.1f}, "
                                f"{100 * d.cost_per_green_pr.high:+.1f}]",
            "d_green": f"{100 * d.green_prs.point:+.1f}% [{100 * d.green_prs.low:+.1f}, "
                       f"{100 * d.green_prs.high:+.1f}]",
            "d_fpy": f"{d.fpy.point:+.3f} [{d.fpy.low:+.3f}, {d.fpy.high:+.3f}]",
            "support": round(e.support, 3),
            "feasible": self.feasible,
            "risk": self.risk,
        }


class SearchResult(list):
    """The ranked candidates (a list), plus how the search went."""

    def __init__(self, *, active_estimate: Estimate | None = None, evaluated: int = 0,
                 trials: int = 0, seconds: float = 0.0, executor: str = ""):
        super().__init__()
        self.active_estimate = active_estimate
        self.evaluated = evaluated
        self.trials = trials
        self.seconds = seconds
        self.executor = executor
        # The replay context and bootstrap weights the candidates were estimated with: a
        # follow-up estimate (an exploration change) is paired with the same resamples.
        self.context: ReplayContext | None = None
        self.weights: np.ndarray | None = None
        # Candidates that beat every ranked one on the outcome model's word but lean on
        # states the window never showed: never proposed, only what exploration aims at.
        self.unsupported: list[Candidate] = []


def _family_spend_and_saving(window: Window, fleet, active, context: ReplayContext
                             ) -> tuple[dict[str, float], dict[str, float]]:
    """Per family: the active policy's spend on the window, and the most a routing of the
    family's own (one escalation order, no cut points) saves on it by the point estimate:
    its spend minus what the order would spend for the family's current Green PRs, among
    orders that keep the family's Green PRs within the margin on supported states."""
    from policies.levers.routing import escalation_options

    n_fam, code = len(window.families), window.family_code

    def by_family(values) -> tuple[np.ndarray, ...]:
        return tuple(np.bincount(code, weights=getattr(values, k), minlength=n_fam)
                     for k in ("cost", "green", "unsupported", "attempts"))

    cost_a, green_a, _, _ = by_family(replay_policy(active, context))
    margin = active.spec.gates.non_inferiority_margin
    r = active.spec.routing
    options = sorted(escalation_options(fleet.tier_names), key=lambda o: o.count(">"))
    best = np.zeros(n_fam)
    for option in options[:SAVING_PROBES]:
        families = {}
        for fam in window.families:
            o = r.families.get(fam)
            entry = o.model_dump(mode="json", exclude_none=True) if o is not None else {}
            families[fam] = {**entry, "escalation": option.split(">"), "thresholds": []}
        try:
            probe = active.evolve(author=AUTHOR, routing={**r.model_dump(mode="json"),
                                                          "families": families})
            cost, green, unsup, attempts = by_family(replay_policy(probe, context))
        except ValueError:
            continue  # an order this fleet or policy cannot serve
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(green > 0, cost * green_a / np.maximum(green, 1e-12), np.inf)
            support = np.where(attempts > 0, 1.0 - unsup / np.maximum(attempts, 1e-12), 1.0)
        ok = (green >= (1.0 - margin) * green_a) & (support >= 0.99) & np.isfinite(need)
        best = np.maximum(best, np.where(ok, cost_a - need, 0.0))
    spend = {f: float(cost_a[i]) for i, f in enumerate(window.families)}
    saving = {f: float(best[i]) for i, f in enumerate(window.families)}
    return spend, saving


def lever_context(window: Window, fleet, *, sample: int = 2000, seed: int = 0,
                  active=None, context: ReplayContext | None = None):
    """What the lever spaces may know of the window (see ``policies.levers.LeverContext``).

    With ``active`` and ``context`` (the search passes both), per-family spend is the
    active policy's as the estimator prices it, and ``family_saving`` comes from replays
    of each family on its own orders (``_family_spend_and_saving``); without them,
    per-family spend is the window's logged spend and no saving is known.
    """
    from policies.levers import LeverContext

    rng = np.random.default_rng(seed)
    rows = rng.choice(window.n, size=min(sample, window.n), replace=False)
    numeric = {name for name in window.model_feature_names if "=" not in name}
    feature_sample = {name: tuple(float(v) for v in window.route_features[rows, j])
                      for j, name in enumerate(window.feature_names) if name in numeric}
    logged = window.logged_combo[rows]
    valid = logged >= 0
    cost = np.where(valid, np.take_along_axis(window.cost_nocache[rows],
                                              np.maximum(logged, 0), axis=1), 0.0).sum(axis=1)
    tokens = (window.input_tokens + window.output_tokens)[rows] * window.logged_len[rows]
    if active is not None and context is not None:
        family_usd, family_saving = _family_spend_and_saving(window, fleet, active, context)
    else:
        every = window.logged_combo >= 0
        logged_usd = np.where(every, np.take_along_axis(
            window.cost_nocache, np.maximum(window.logged_combo, 0), axis=1), 0.0).sum(axis=1)
        spent = np.bincount(window.family_code, weights=logged_usd,
                            minlength=len(window.families))
        family_usd = {f: float(spent[i]) for i, f in enumerate(window.families)}
        family_saving = {}
    return LeverContext(fleet=fleet, families=tuple(window.families),
                        feature_sample=feature_sample,
                        task_usd=tuple(float(c) for c in cost),
                        task_tokens=tuple(float(t) for t in tokens),
                        family_usd=family_usd, family_saving=family_saving)


def objective(summary: dict[str, float], active: dict[str, float], margin: float,
              fpy_margin: float | None = None, *, count_support: bool = True) -> float:
    """Cost per Green PR, plus a large penalty per unit of non-inferiority violated.

    ``margin``: the relative drop of Green PRs tolerated (``gates.non_inferiority_margin``).
    ``fpy_margin``: the absolute drop of FPY tolerated (``gates.fpy_margin``); None, the
    default, leaves FPY out of the objective (it is reported, never constrains).
    ``count_support=False``: the same objective as if every state were observed (what a
    candidate would be worth if the evidence it lacks confirmed the outcome model: the
    value exploration buys evidence for, never a ranking for promotion).
    """
    green_rel = summary["green_prs"] / max(active["green_prs"], 1e-12) - 1.0
    violation = max(0.0, -margin - green_rel)
    if fpy_margin is not None:
        violation += max(0.0, -fpy_margin - (summary["fpy"] - active["fpy"]))
    value = summary["cost_per_green_pr"]
    if not np.isfinite(value):
        return INFEASIBLE_PENALTY * 10
    # Mass on unobserved combinations cannot be trusted: it costs like a violation.
    if count_support:
        violation += max(0.0, MIN_SUPPORT - summary["support"])
    return value * (1.0 + INFEASIBLE_PENALTY * violation) if violation > 0 else value


def feasibility_reasons(deltas: Deltas, margin: float, fpy_margin: float | None = None
                        ) -> list[str]:
    """Why a candidate is not feasible (empty: feasible), on the intervals' lower ends:
    Green PRs within ``margin`` (relative), FPY within ``fpy_margin`` (absolute) only when
    set."""
    reasons = []
    if deltas.green_prs.low < -margin:
        reasons.append(f"Green PRs may fall {100 * -deltas.green_prs.low:.1f}% "
                       f"(margin {100 * margin:.1f}%)")
    if fpy_margin is not None and deltas.fpy.low < -fpy_margin:
        reasons.append(f"FPY may fall {-deltas.fpy.low:.3f} (fpy_margin {fpy_margin:.3f})")
    return reasons


def risk_reasons(est: Estimate, deltas: Deltas, active: Estimate | None = None) -> list[str]:
    """Why a feasible candidate is not risk "low" (empty: nothing against it)."""
    out = []
    if est.support < 0.99:
        out.append(f"support {est.support:.3f} < 0.99: part of its mass is on states the "
                   "window rarely showed")
    if not deltas.cost_per_green_pr.high < 0:
        out.append("the interval admits no saving (its high end is not below zero)")
    if est.assumptions:
        out.append("priced on assumptions: " + "; ".join(est.assumptions))
    if active is not None:
        cut = est.budget_exceeded - active.budget_exceeded
        if cut > max(0.5, CUT_SHARE * est.n_tasks):
            out.append(f"caps end {cut:.0f} more of the window's {est.n_tasks} tasks "
                       "budget_exceeded: the saving comes from cutting observed tasks, with "
                       "caps fitted on this same window, and is not shown to hold on new "
                       "tasks")
    return out


def risk_level(est: Estimate, deltas: Deltas, feasible: bool,
               active: Estimate | None = None) -> str:
    """``high``: not feasible or support < 0.9; ``low``: nothing in ``risk_reasons``
    (with ``active``, caps that cut the window's tasks count against it); else ``medium``."""
    if not feasible or est.support < 0.9:
        return "high"
    return "medium" if risk_reasons(est, deltas, active) else "low"


def rank_key(candidate: Candidate) -> tuple:
    """Feasible first, then the pessimistic end of the interval (the high end of the
    relative change of cost per Green PR: the least saving the interval admits), then the
    point change, then the cost per Green PR."""
    d = candidate.deltas.cost_per_green_pr
    high = d.high if np.isfinite(d.high) else float("inf")
    return (not candidate.feasible, high, d.point, candidate.estimate.cost_per_green_pr.point)


def _levers(levers: str | Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(label, lever names) of each search run: every lever alone, and "all" jointly."""
    from policies.levers import LEVER_NAMES, lever

    if levers == "all" or levers == ("all",) or levers == ["all"]:
        names = list(LEVER_NAMES)
        return [(n, (n,)) for n in names] + [("all", tuple(names))]
    if isinstance(levers, str):
        levers = [levers]
    runs = []
    for name in levers:
        if name == "all":
            runs.append(("all", tuple(LEVER_NAMES)))
        else:
            lever(name)  # refuses an unknown name, naming the levers
            runs.append((name, (name,)))
    return runs


class _Evaluator:
    """Replays points of one lever set (runs inside a Tune trial or in-process)."""

    def __init__(self, ctx: ReplayContext, lever_ctx, active, names, active_summary, margin):
        self.ctx, self.lever_ctx, self.active = ctx, lever_ctx, active
        self.names, self.active_summary, self.margin = names, active_summary, margin
        self.fpy_margin = active.spec.gates.fpy_margin  # None: FPY never constrains
        from policies.levers import joint_anchor, joint_space

        self.space = joint_space(names, active, lever_ctx)
        self.anchor = joint_anchor(names, active, lever_ctx)

    def policy(self, point: dict[str, Any]):
        from policies.levers import apply_joint

        return apply_joint(self.names, self.active, point, self.lever_ctx, author=AUTHOR)

    def evaluate(self, point: dict[str, Any]) -> dict[str, Any] | None:
        from policies.policy import validate_against_fleet

        try:
            policy = self.policy(point)
            validate_against_fleet(policy, self.lever_ctx.fleet)
        except ValueError:
            return None  # a point the policy document refuses is simply not a candidate
        summary = point_summary(replay_policy(policy, self.ctx))
        return {"point": point, "hash": policy.content_hash, **summary,
                "objective": objective(summary, self.active_summary, self.margin,
                                       self.fpy_margin),
                "objective_if_observed": objective(summary, self.active_summary, self.margin,
                                                   self.fpy_margin, count_support=False)}

    def neighbours(self, center: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        out = [dict(center)]
        keys = list(self.space)
        for _ in range(count - 1):
            p = dict(center)
            for k in rng.sample(keys, k=max(1, min(len(keys), rng.randint(1, 3)))):
                p[k] = self.space[k].nudge(p[k], rng)
            out.append(p)
        return out

    def trial(self, center: dict[str, Any], per_trial: int, seed: int) -> list[dict[str, Any]]:
        results = []
        for p in self.neighbours(center, per_trial, seed):
            r = self.evaluate(p)
            if r is not None:
                results.append(r)
        return results


def _point_seed(point: dict[str, Any], seed: int) -> int:
    # sha256, not hash(): str hashes are salted per process (PYTHONHASHSEED), which made
    # the neighbours, and so the whole search, differ from one run to the next.
    text = json.dumps(point, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") % (2**31) + seed


SEEDED_STARTS = 2  # the best escalation seeds the optimiser also starts from


def escalation_seeds(evaluator: _Evaluator) -> list[dict[str, Any]]:
    """One point per escalation order of the routing space: the anchor with that order as
    a fixed cascade (each tier ``attempts_per_tier`` times). A handful of trials around the
    active policy rarely reaches a far order (from "top tier only", the cheap-first
    cascade), so every order is replayed once before the optimiser runs (a replay is cheap)
    and the best ones become its starting points too."""
    key = "routing__escalation" if "routing__escalation" in evaluator.space else "escalation"
    if key not in evaluator.space or evaluator.space[key].kind != "choice":
        return []
    prefix = key[: -len("escalation")]
    per_tier = evaluator.anchor.get(f"{prefix}attempts_per_tier", 1)
    attempts = evaluator.space.get(f"{prefix}max_attempts")
    seeds = []
    for order in evaluator.space[key].values:
        point = dict(evaluator.anchor)
        point[key] = order
        if f"{prefix}router" in point:
            point[f"{prefix}router"] = "fixed"
        if attempts is not None:
            wanted = len(str(order).split(">")) * int(per_tier)
            point[f"{prefix}max_attempts"] = int(min(max(wanted, attempts.lo), attempts.hi))
        if point != evaluator.anchor:
            seeds.append(point)
    return seeds


def _tune_trainable(config: dict[str, Any], evaluator: _Evaluator, per_trial: int,
                    seed: int) -> None:
    from ray import tune

    results = evaluator.trial(config, per_trial, _point_seed(config, seed))
    best = min((r["objective"] for r in results), default=INFEASIBLE_PENALTY * 100)
    tune.report({"objective": best, "evaluated": json.dumps(results, default=str)})


def _progress_callback_class():
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self, total: int):
            self.total, self.done = total, 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.done += 1
            n = len(json.loads(result.get("evaluated", "[]")))
            print(f"  trial {self.done}/{self.total}: {n} candidates, best "
                  f"{result.get('objective', float('nan')):.5g}", flush=True)

    return Progress


def _Progress(total: int):
    return _progress_callback_class()(total)


def _sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe' or 'random' (got {name!r})")


def _run_tune(evaluator: _Evaluator, trials: int, per_trial: int, seed: int,
              progress: bool, sampler: str = "tpe",
              starts: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # The legacy reporter honours verbose=0 (the new one still prints a banner per run);
    # progress comes from our own callback instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    try:
        space = {k: p.tune_domain() for k, p in evaluator.space.items()}
        algo = ConcurrencyLimiter(OptunaSearch(metric="objective", mode="min",
                                               sampler=_sampler(sampler, seed),
                                               points_to_evaluate=starts or [evaluator.anchor]),
                                  max_concurrent=2)
        trainable = tune.with_parameters(_tune_trainable, evaluator=evaluator,
                                         per_trial=per_trial, seed=seed)
        storage = tempfile.mkdtemp(prefix="autopilot-tune-")
        callbacks = [_Progress(trials)] if progress else []
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=algo, num_samples=trials),
            run_config=tune.RunConfig(storage_path=storage, name="whatif", verbose=0,
                                      callbacks=callbacks),
        )
        grid = tuner.fit()
        out = []
        for result in grid:
            if result.metrics and "evaluated" in result.metrics:
                out.extend(json.loads(result.metrics["evaluated"]))
        return out
    finally:
        if started_here:
            ray.shutdown()


def _run_inline(evaluator: _Evaluator, trials: int, per_trial: int, seed: int,
                progress: bool, sampler: str = "tpe",
                starts: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The same search without Ray: Optuna's ask/tell in this process (tests, tiny windows)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=_sampler(sampler, seed))
    labels = {k: p for k, p in evaluator.space.items()}
    for start in starts or [evaluator.anchor]:
        study.enqueue_trial({k: (repr(v) if labels[k].kind == "choice" else v)
                             for k, v in start.items()})
    out = []
    for i in range(trials):
        trial = study.ask()
        center = {k: p.suggest(trial, k) for k, p in evaluator.space.items()}
        results = evaluator.trial(center, per_trial, _point_seed(center, seed))
        best = min((r["objective"] for r in results), default=INFEASIBLE_PENALTY * 100)
        study.tell(trial, best)
        out.extend(results)
        if progress:
            print(f"  trial {i + 1}/{trials}: {len(results)} candidates, best {best:.5g}",
                  flush=True)
    return out


def _unsupported_candidates(evaluated, ranked, active_policy, active_summary, active_est,
                            fpy_margin, margin, estimated) -> list[Candidate]:
    """The best few candidates whose only fault is support: feasible and cheaper than the
    best ranked candidate (or the active policy) if the outcome model is right on the states
    the window never showed. Estimated like any candidate, marked infeasible with the reason:
    exploration (``experiments.exploration``) buys the evidence they lack. ``estimated``:
    the search's own ``(label, names, point) -> (policy, estimate, deltas)``."""
    best = min([active_summary["cost_per_green_pr"],
                *(c.estimate.cost_per_green_pr.point for c in ranked if c.feasible)])
    pool = sorted((e for e in evaluated
                   if e[2]["support"] < MIN_SUPPORT
                   and e[2]["objective_if_observed"] < INFEASIBLE_PENALTY
                   and e[2]["cost_per_green_pr"] < best),
                  key=lambda e: e[2]["cost_per_green_pr"])
    seen: set[tuple] = {(round(c.estimate.cost_per_green_pr.point, 9),) for c in ranked}
    out: list[Candidate] = []
    for label, names, r in pool:
        key = (round(r["cost_per_green_pr"], 9),)
        if key in seen or r["hash"] == active_policy.content_hash:
            continue
        seen.add(key)
        policy, est, deltas = estimated(label, names, r["point"])
        reasons = [*feasibility_reasons(deltas, margin, fpy_margin),
                   (f"support {est.support:.3f} < {MIN_SUPPORT}: the window never showed "
                    "part of what it would do")]
        out.append(Candidate(policy=policy, lever=label, point=r["point"], estimate=est,
                             deltas=deltas, feasible=False, risk="high", reasons=reasons,
                             risk_reasons=risk_reasons(est, deltas, active_est)))
        if len(out) >= UNSUPPORTED_KEPT:
            break
    return out


def search_candidates(window, fleet, active_policy, *,
                      levers: str | Sequence[str] = ("routing",), candidates: int = 10,
                      trials: int = 8, per_trial: int = 32, seed: int = 0,
                      progress: bool = True, models=None, bootstrap: int = 200,
                      level: float = 0.9, executor: str = "tune", min_support: int = 20,
                      sampler: str = "tpe", widen: Mapping[str, float] | None = None
                      ) -> SearchResult:
    """Search the levers on ``window`` and return candidates ranked best first.

    ``widen``: per lever, the interval inflation from the calibration record; a candidate's
    intervals are scaled by the largest factor of its label and the levers it changes.

    ``levers``: lever names searched one at a time, or "all" (each lever alone and all
    jointly). ``trials`` Tune trials per run, each evaluating ``per_trial`` candidates.
    ``executor``: "tune" (Ray Tune with OptunaSearch) or "inline" (Optuna in-process).
    ``sampler``: Optuna's "tpe" (default) or "random" (the baseline of the benchmarks).
    """
    from experiments.outcomes import fit_outcome_models
    from policies.policy import validate_against_fleet

    t0 = time.perf_counter()
    window = as_window(window, fleet)
    validate_against_fleet(active_policy, fleet)
    models = models if models is not None else fit_outcome_models(window, seed=seed)
    ctx = ReplayContext(window, models, min_support=min_support)
    lever_ctx = lever_context(window, fleet, seed=seed, active=active_policy, context=ctx)
    margin = active_policy.spec.gates.non_inferiority_margin
    fpy_margin = active_policy.spec.gates.fpy_margin  # None: FPY reported, never constrains
    active_summary = point_summary(replay_policy(active_policy, ctx))
    runs = _levers(levers)
    _sampler(sampler, seed)  # refuse a bad name before any work
    if executor not in ("tune", "inline"):
        raise ValueError(f"executor must be 'tune' or 'inline' (got {executor!r})")
    evaluated: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
    n_trials = 0
    for label, names in runs:
        ev = _Evaluator(ctx, lever_ctx, active_policy, names, active_summary, margin)
        if not ev.space:
            if progress:
                print(f"[{label}] nothing to search on this fleet (no options)", flush=True)
            continue
        if progress:
            print(f"[{label}] searching {len(ev.space)} parameters: {trials} trials x "
                  f"{per_trial} candidates ({executor})", flush=True)
        run = _run_tune if executor == "tune" else _run_inline
        seeded = [r for r in map(ev.evaluate, escalation_seeds(ev)) if r is not None]
        evaluated.extend((label, names, r) for r in seeded)
        seeded.sort(key=lambda r: r["objective"])
        starts = [ev.anchor, *(r["point"] for r in seeded[:SEEDED_STARTS]
                               if r["objective"] < INFEASIBLE_PENALTY)]
        if progress and seeded:
            print(f"[{label}] {len(seeded)} escalation orders replayed first; best "
                  f"{seeded[0]['objective']:.5g}", flush=True)
        found = run(ev, trials, per_trial, seed, progress, sampler, starts=starts)
        n_trials += trials
        evaluated.extend((label, names, r) for r in found)

    # Rank distinct policies by objective; estimate the best few with intervals.
    # Distinct outcomes only (many points replay identically), and the best of every run
    # first so one lever's near-copies cannot crowd the others out.
    seen: dict[tuple, tuple[str, tuple[str, ...], dict[str, Any]]] = {}
    ordered = sorted(evaluated, key=lambda x: x[2]["objective"])
    firsts = {label: None for label, _ in runs}
    for item in ordered:
        if firsts.get(item[0], 1) is None:
            firsts[item[0]] = item
    def outcome_key(r: dict[str, Any]) -> tuple:
        return (round(r["cost_per_green_pr"], 9), round(r["green_prs"], 6), round(r["fpy"], 6))

    same_as_active = outcome_key(active_summary)  # a change that changes nothing is no candidate
    for label, names, r in [f for f in firsts.values() if f is not None] + ordered:
        key = outcome_key(r)
        if (r["hash"] != active_policy.content_hash and key != same_as_active
                and r["objective"] < INFEASIBLE_PENALTY):
            seen.setdefault(key, (label, names, r))
    # Intervals carry the outcome model's own fit error (the points above did not need it).
    attach_model_refits(ctx, seed=seed)
    weights = bootstrap_weights(window.n, bootstrap, seed)
    active_est = estimate(active_policy, window, context=ctx, weights=weights, level=level)
    result = SearchResult(active_estimate=active_est, evaluated=len(evaluated),
                          trials=n_trials, executor=executor)
    result.context, result.weights = ctx, weights
    # Intervals decide feasibility, and the search ranks on points: a candidate just inside
    # the margin on its point often fails on its interval, and such near-misses can fill the
    # first places. Estimating three times as many and putting the feasible first keeps a
    # feasible candidate that ranked lower on the point objective.
    def estimated(label, names, point):
        """A point of a lever set as a policy, estimated with intervals (widened by the
        calibration record's largest factor of its label and levers) and compared."""
        ev = _Evaluator(ctx, lever_ctx, active_policy, names, active_summary, margin)
        policy = ev.policy(point)
        factor = max([1.0, *((widen or {}).get(n, 1.0) for n in (label, *names))])
        est = estimate(policy, window, context=ctx, weights=weights, level=level,
                       widen=factor)
        return policy, est, compare(est, active_est)

    for label, names, r in list(seen.values())[:3 * candidates]:
        policy, est, deltas = estimated(label, names, r["point"])
        reasons = feasibility_reasons(deltas, margin, fpy_margin)
        feasible = not reasons
        result.append(Candidate(policy=policy, lever=label, point=r["point"], estimate=est,
                                deltas=deltas, feasible=feasible,
                                risk=risk_level(est, deltas, feasible, active_est),
                                reasons=reasons,
                                risk_reasons=risk_reasons(est, deltas, active_est)))
    # Ranked by the pessimistic end of the interval, not the point (see rank_key).
    result.sort(key=rank_key)
    del result[candidates:]
    result.unsupported = _unsupported_candidates(evaluated, result, active_policy,
                                                 active_summary, active_est, fpy_margin,
                                                 margin, estimated)
    result.seconds = time.perf_counter() - t0
    return result
