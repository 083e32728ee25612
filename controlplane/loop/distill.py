"""The distillation lever in the loop: settings, pure decisions and the whole path.

``run_distill`` is what ``autopilot distill --family F`` runs (docs/distillation.md):
training set (collected + top-tier teacher top-up, gate-suite prompts refused by hash) ->
job on Ray (LoRA for the small tier, seeded, held-out before/after) -> adapter pinned in a
copy of the fleet manifest -> serve check through ``serving.engine`` -> candidate policy
(the family starts on the small tier with the adapter and escalates as before) -> the
estimator's price of it (the held-out verdicts seed the outcome model when the window has
no adapter calls) -> optionally adopted into the state directory as a proposal, which is
then gated, approved, promoted, verified and rolled back like any policy change.

``nightly_distill`` is the step the nightly flow runs when ``distillation.nightly`` is on.
Pure parts: ``DistillSettings``, ``excluded_families``, ``candidate_policy``,
``training_budget_allows``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from contracts.prediction import Prediction
from controlplane.settings import DistillSettings

__all__ = [
    "DistillSettings",
    "active_policy_of",
    "adopt_into_state",
    "candidate_policy",
    "excluded_families",
    "gateway_collector_config",
    "nightly_distill",
    "run_distill",
    "training_budget_allows",
]

ACTOR = "autopilot-distill"


def excluded_families(policy: Any, settings: DistillSettings) -> frozenset[str]:
    """Families never collected or distilled: the policy's cache exclusions and the
    settings' own list."""
    return frozenset(policy.spec.cache.response.exclude_families) | frozenset(
        settings.collect.exclude_families)


def training_budget_allows(settings: DistillSettings, steps: int) -> bool:
    return settings.nightly and 0 < steps <= settings.nightly_step_budget


def candidate_policy(active: Any, fleet: Any, *, family: str, tier: str, adapter: str,
                     author: str = ACTOR) -> Any:
    """The active policy with ``family`` served first by ``tier`` + ``adapter`` (the rest of
    its escalation unchanged). Refused when the variant the policy serves lacks it."""
    from policies.policy import validate_against_fleet

    distill = {f: d.model_dump(mode="json") for f, d in active.spec.distillation.items()}
    distill[family] = {"tier": tier, "adapter": adapter}
    policy = active.evolve(author=author, description=f"distil {family} into {tier}+{adapter}",
                           distillation=distill)
    validate_against_fleet(policy, fleet)
    return policy


def active_policy_of(state: Any, policy_path: str | Path | None) -> Any:
    from policies.policy import load_policy

    if policy_path is not None:
        return load_policy(Path(policy_path))
    if state is not None and state.exists():
        from store import Store

        with Store.open(state.store_url()) as store:
            record = store.active_policy()
            if record is not None:
                return record.policy
    return load_policy(Path(__file__).parents[1] / "starter" / "policy.yaml")


def _estimate(state: Any, fleet: Any, active: Any, candidate: Any, *, family: str, tier: str,
              variant: str, adapter: str, record: dict[str, Any], since: str | None,
              until: str | None, seed: int) -> dict[str, Any] | None:
    """The estimator's view of the candidate on the state's telemetry window, if any."""
    if state is None or not Path(state.telemetry_dir).is_dir():
        return None
    from experiments.adapter_prior import seed_adapter_outcomes
    from experiments.estimator import compare, estimate
    from experiments.outcomes import fit_outcome_models
    from experiments.window import load_estimator_window

    try:
        window = load_estimator_window(state.telemetry_dir, since, until, fleet=fleet,
                             default_verifier_cost_usd=state.settings()
                             .default_verifier_cost_usd)
    except ValueError as exc:  # an empty window
        return {"skipped": str(exc)}
    window = seed_adapter_outcomes(
        window, family=family, tier=tier, variant=variant, adapter=adapter,
        verdicts=record["heldout_verdicts"]["after"],
        difficulties=record.get("heldout_difficulties"))
    models = fit_outcome_models(window, seed=seed)
    a = estimate(active, window, fleet, models, seed=seed)
    c = estimate(candidate, window, fleet, models, seed=seed)
    return {"active": a.as_dict(), "candidate": c.as_dict(),
            "deltas": compare(c, a).as_dict(), "notes": c.notes}


def run_distill(*, family: str, state: Any = None, fleet_path: str | Path | None = None,
                out_dir: str | Path | None = None, policy_path: str | Path | None = None,
                steps: int | None = None, teacher: int | None = None,
                max_examples: int | None = None, eval_tasks: int | None = None,
                seed: int | None = None, executor: str = "ray", serve_check: bool = True,
                adopt: bool = False, since: str | None = None, until: str | None = None,
                echo: Any = print) -> dict[str, Any]:
    """The whole distillation path for one family (see the module docstring)."""
    from contracts.manifest import load_fleet
    from gates.suite import load_reference_suite
    from serving.collector import gate_prompt_hashes, load_training_set, training_set_dir
    from training.distill import (
        DistillJob,
        adapter_name_for,
        check_serves,
        distill_family,
        examples_digest,
        plan_examples,
        teacher_examples,
    )

    settings = state.settings().distillation if state is not None and state.exists() \
        else DistillSettings()
    if fleet_path is None:
        if state is None:
            raise PermanentError("give --fleet or a state directory")
        fleet_path = state.fleet_path
    fleet_path = Path(fleet_path)
    fleet = load_fleet(fleet_path)
    active = active_policy_of(state, policy_path)
    if family in excluded_families(active, settings):
        raise PermanentError(f"family {family} is excluded from reuse by the policy or the "
                             "settings: it is never collected or distilled")
    tier = settings.target_tier or fleet.tiers[0].name
    variant = fleet.tier(tier).variant(active.spec.quantization.get(tier)).name
    seed = settings.seed if seed is None else seed
    blocked = gate_prompt_hashes([load_reference_suite()])

    collected = []
    if state is not None:
        collected = load_training_set(training_set_dir(state.root), family, blocked=blocked)
    cap = max_examples or settings.max_examples
    want_teacher = settings.teacher_examples if teacher is None else teacher
    topped = []
    if want_teacher > 0 and len(collected) < cap:
        echo(f"collected {len(collected)} verified examples of {family}; asking the top tier "
             f"for up to {want_teacher} more (train-split tasks)")
        topped = teacher_examples(fleet_path, family, want_teacher, seed=seed, blocked=blocked)
    examples = plan_examples([*collected, *topped], family=family, blocked=blocked,
                             max_examples=cap)
    if len(examples) < min(settings.min_examples, cap) and teacher is None:
        raise PermanentError(f"only {len(examples)} verified examples of {family} "
                             f"(need {settings.min_examples}): opt the family into "
                             "collection or pass --teacher N")
    if not examples:
        raise PermanentError(f"no verified examples of {family} to train on")
    adapter = adapter_name_for(family, tier, examples_digest(examples), seed)
    if out_dir is None:
        if state is None:
            raise PermanentError("give --out or a state directory")
        out_dir = Path(state.root) / "distill" / adapter
    out_dir = Path(out_dir)
    job = DistillJob(family=family, tier=tier, variant=variant, adapter=adapter,
                     steps=steps or settings.steps, seed=seed,
                     eval_tasks=settings.eval_tasks if eval_tasks is None else eval_tasks)
    result = distill_family(fleet_path, out_dir, job, examples, blocked=blocked,
                            executor=executor, log=echo)
    echo(f"held-out pass rate of {tier}/{variant} on {family}: "
         f"{_pct(result.pass_rate_before)} -> {_pct(result.pass_rate_after)} "
         f"({result.heldout} tasks); adapter pinned in {result.manifest}")
    record = json.loads((out_dir / "distill.json").read_text(encoding="utf-8"))
    new_fleet = load_fleet(result.manifest)
    report: dict[str, Any] = {
        "family": family, "tier": tier, "variant": variant, "adapter": adapter,
        "examples": {"collected": len(collected), "teacher": len(topped),
                     "used": len(examples)},
        "pass_rate_before": result.pass_rate_before,
        "pass_rate_after": result.pass_rate_after, "by_difficulty": result.by_difficulty,
        "heldout": result.heldout, "train_seconds": result.train_seconds,
        "adapter_files": result.adapter_files, "manifest": result.manifest,
        "manifest_hash": result.manifest_hash, "executor": executor,
    }
    if serve_check:
        prompt = examples[0].prompt
        report["serve_check"] = check_serves(result.manifest, tier, variant, adapter, prompt)
        echo(f"vLLM served {tier}/{variant}+{adapter} (hashes checked at start)")
    candidate = candidate_policy(active, new_fleet, family=family, tier=tier, adapter=adapter)
    candidate_path = out_dir / "candidate.yaml"
    from policies.policy import save_policy

    save_policy(candidate, candidate_path)
    report["candidate"] = str(candidate_path)
    report["estimate"] = _estimate(state, new_fleet, active, candidate, family=family,
                                   tier=tier, variant=variant, adapter=adapter, record=record,
                                   since=since, until=until, seed=seed)
    if adopt:
        report["adopted"] = adopt_into_state(state, result.manifest, candidate, adapter=adapter,
                                             family=family, tier=tier, variant=variant,
                                             predicted=report["estimate"])
        echo(f"adopted: state fleet.yaml now pins {adapter}; proposal "
             f"{report['adopted']['proposal_id']} awaits the gates (autopilot gate "
             f"--candidate {candidate_path} --proposal {report['adopted']['proposal_id']})")
    (out_dir / "distill-report.json").write_text(json.dumps(report, indent=2, default=str)
                                                 + "\n", encoding="utf-8")
    return report


def adopt_into_state(state: Any, manifest: str | Path, candidate: Any, *, adapter: str,
                     family: str, tier: str, variant: str,
                     predicted: dict[str, Any] | None) -> dict[str, Any]:
    """Pin the adapter in the state's fleet.yaml (the old one kept as a backup) and record
    the candidate as a ``distillation`` proposal against the active policy."""
    from contracts.manifest import load_fleet
    from controlplane.loop.gating import store_candidate
    from training.distill import register_adapter

    if state is None or not state.exists():
        raise PermanentError("--adopt needs an initialised state directory")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = state.fleet_path.with_name(f"fleet.yaml.{stamp}.bak")
    shutil.copyfile(state.fleet_path, backup)
    source = load_fleet(manifest)
    entry = source.tier(tier).variant(variant).adapter(adapter)
    from contracts.manifest import resolve_path

    register_adapter(manifest, state.fleet_path, tier=tier, variant=variant, adapter=adapter,
                     adapter_dir=resolve_path(entry.path, Path(manifest).parent), family=family)
    from store import Store

    with Store.open(state.store_url()) as store:
        active = store.active_policy()
        policy, _note = store_candidate(store, candidate, baseline_version=active.version)
        deltas = (predicted or {}).get("deltas") or {}
        cpg = deltas.get("cost_per_green_pr_rel") or {}
        p = store.create_proposal(
            candidate_version=policy.metadata.version, baseline_version=active.version,
            lever="distillation", window=f"distill-{adapter}",
            predicted=Prediction(
                lever="distillation", risk="high",
                cost_per_green_pr_rel_delta=cpg.get("point"),
                cost_per_green_pr_rel_delta_ci=(None if None in (cpg.get("low"), cpg.get("high"))
                                                else (cpg["low"], cpg["high"]))),
            actor=ACTOR)
        store.audit_append(actor=ACTOR, action="fleet.adapter.adopted", subject=adapter,
                           payload={"family": family, "tier": tier, "variant": variant,
                                    "manifest_backup": backup.name,
                                    "files": dict(entry.files)})
    return {"proposal_id": p.proposal_id, "candidate_version": policy.metadata.version,
            "fleet_backup": str(backup)}


def nightly_distill(state: Any, since: str, until: str, *, executor: str = "ray",
                    echo: Any = print) -> dict[str, Any]:
    """The nightly step: rank families on the window, distil the best qualifying one when
    the settings allow it and the training budget covers it. Writes under
    ``<state>/distill/``; the state's fleet and policies are left to ``--adopt`` / owners."""
    from experiments.distill_candidates import distill_candidates
    from experiments.window import load_estimator_window

    settings = state.settings()
    ds = settings.distillation
    if not ds.nightly:
        return {"skipped": "distillation.nightly is off"}
    if not training_budget_allows(ds, ds.steps):
        return {"skipped": f"{ds.steps} steps exceed the nightly budget "
                           f"({ds.nightly_step_budget})"}
    from contracts.manifest import load_fleet

    fleet = load_fleet(state.fleet_path)
    active = active_policy_of(state, None)
    tasks, attempts, calls = load_estimator_window(state.telemetry_dir, since, until)
    if len(tasks) == 0:
        return {"skipped": "no telemetry in the window"}
    ranked = distill_candidates(
        tasks, attempts, calls, fleet, target_tier=ds.target_tier,
        target_pass_rate=ds.target_pass_rate, min_upper_share=ds.min_upper_share,
        default_verifier_cost_usd=settings.default_verifier_cost_usd,
        exclude_families=excluded_families(active, ds))
    rows = [r.as_dict() for r in ranked]
    chosen = next((r for r in ranked if r.qualifies
                   and r.family not in active.spec.distillation), None)
    if chosen is None:
        return {"candidates": rows, "skipped": "no family qualifies"}
    try:
        report = run_distill(family=chosen.family, state=state, executor=executor,
                             serve_check=False, since=since, until=until, echo=echo)
    except PermanentError as exc:
        return {"candidates": rows, "family": chosen.family, "skipped": str(exc)}
    return {"candidates": rows, "family": chosen.family, "report": report}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def gateway_collector_config(settings: Any, state_root: str | Path) -> dict[str, Any]:
    """What the gateway needs to collect verified outputs (``serving.gateway``): the owner's
    collection spec, where to write, and the gate-suite prompts it must never keep."""
    from gates.suite import load_reference_suite
    from serving.collector import gate_prompt_hashes

    return {"spec": settings.distillation.collect.model_dump(),
            "state_root": str(state_root),
            "blocked_prompt_sha256": sorted(gate_prompt_hashes([load_reference_suite()]))}
