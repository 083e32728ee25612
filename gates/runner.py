"""Runs the gates: pins, suite runs through the serving path, probes, then the decisions.

The side effects (hashing files, calling the serving path) happen here; every decision is
a pure function in ``gates.gates`` applied to what was recorded. Fail closed: a stage that
raises leaves its gates ERROR with the reason, and nothing here can report PASSED for a
gate whose observations are missing.

Task ids: the gateway keeps spend per task id (guardrails) and seeds routing draws by it.
Every suite run gets its own ids, ``gate-<run id>-<c1|c2|base|cache>-<case>``, with a fresh
run id per gate run, so spend from one run (or an earlier gate run on the same fleet) never
refuses a call of another. Reproducibility therefore assumes routing does not depend on the
task id for gate traffic: the gateway never explores (nor shadows) for purpose ``gate``,
so the policy's own routing decides every gate call.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from contracts.guardrails import TASK_CAPS, Cap, GuardrailRefusal
from gates.gates import (
    GateResult,
    Phase,
    cache_safety_gate,
    cost_latency_gate,
    guarded,
    guardrails_gate,
    non_inferiority_gate,
    overall,
    pinned_weights_gate,
    reproducibility_gate,
)
from gates.port import ServingPath
from gates.records import (
    AttemptRecord,
    CacheCheck,
    CaseRun,
    FileCheck,
    ProbeCall,
    ProbeResult,
    SuiteRun,
)
from gates.suite import Suite, SuiteCase
from gates.verifiers import check_output
from policies.policy import Policy

__all__ = [
    "API_PRICED_NO_PINS",
    "GateOptions",
    "GateReport",
    "caps_set",
    "check_pinned_files",
    "pinned_targets",
    "run_cache_checks",
    "run_case",
    "run_gates",
    "run_guardrail_probes",
    "run_suite",
    "sample_cases",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GateOptions:
    alpha: float = 0.05  # one-sided level of the non-inferiority bounds
    cache_sample: int = 30  # cases sampled for the cache-safety gate
    cache_seed: str = "gate-cache-v1"
    concurrency: int = 1  # 1: one request at a time, so batching never varies between runs
    probe_call_budget: int = 200  # most calls a spend-cap probe may make

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "cache_sample": self.cache_sample,
                "cache_seed": self.cache_seed, "concurrency": self.concurrency,
                "probe_call_budget": self.probe_call_budget}


@dataclass(frozen=True)
class GateReport:
    candidate: Policy
    baseline: Policy
    fleet_hash: str
    suite: Suite
    file_checks: tuple[FileCheck, ...]
    runs: dict[str, SuiteRun]
    cache_checks: tuple[CacheCheck, ...] | None
    probes: tuple[ProbeResult, ...]
    results: tuple[GateResult, ...]
    overall: Phase
    options: GateOptions
    dry_run: bool
    started_at: datetime
    finished_at: datetime
    stage_errors: dict[str, str] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """True when the candidate must not go on (never in dry-run mode)."""
        return not self.dry_run and self.overall is not Phase.PASSED


# ----------------------------------------------------------------------- pinned weights
def pinned_targets(policy: Policy, fleet) -> list[tuple[str, str, tuple[str, ...]]]:
    """(tier, variant, adapters) the policy can route to: every tier in its escalation
    orders and distillation targets, the variant its quantization picks (else the tier's
    default), and the adapters its distillation names on that tier."""
    spec = policy.spec
    tiers: list[str] = list(spec.routing.escalation)
    for override in spec.routing.families.values():
        tiers += list(override.escalation or [])
    tiers += [d.tier for d in spec.distillation.values()]
    out = []
    for tier in dict.fromkeys(tiers):
        variant = fleet.tier(tier).variant(spec.quantization.get(tier)).name
        adapters = tuple(sorted({d.adapter for d in spec.distillation.values() if d.tier == tier}))
        out.append((tier, variant, adapters))
    return out


# The path a check of an API-priced variant carries: it has no weights to pin (not a failure).
API_PRICED_NO_PINS = "api-priced, no weights to pin"


def check_pinned_files(policy: Policy, fleet, manifest_dir: str | Path) -> list[FileCheck]:
    """Hash every weight and adapter file the policy names; compare with the manifest.

    An API-priced variant has no weights (nor adapters): it gets one passing check whose
    path says so (``API_PRICED_NO_PINS``), never a mismatch. A file in a weights or adapter
    directory that the manifest does not pin is a failing check naming it (the engine would
    load it: ``contracts.manifest.unpinned_files``)."""
    from contracts.manifest import EXTRA_FILE, resolve_path, sha256_file, unpinned_files

    checks: list[FileCheck] = []

    def check(tier: str, variant: str, adapter: str | None, root: Path,
              files: dict[str, str]) -> None:
        if not files:
            checks.append(FileCheck(tier, variant, adapter, str(root), None, None,
                                    "the manifest pins no files here (nothing to verify)"))
            return
        for rel, expected in sorted(files.items()):
            path = root / rel
            if not path.is_file():
                checks.append(FileCheck(tier, variant, adapter, str(path), expected, None,
                                        "missing"))
                continue
            actual = sha256_file(path)
            problem = None if actual == expected else \
                f"sha256 {actual[:12]}... != manifest {expected[:12]}..."
            checks.append(FileCheck(tier, variant, adapter, str(path), expected, actual,
                                    problem))
        for rel in unpinned_files(root, files):
            checks.append(FileCheck(tier, variant, adapter, str(root / rel), None, None,
                                    EXTRA_FILE))

    for tier, variant_name, adapters in pinned_targets(policy, fleet):
        variant = fleet.tier(tier).variant(variant_name)
        if variant.api_priced:
            checks.append(FileCheck(tier, variant.name, None, API_PRICED_NO_PINS, None, None))
            continue
        check(tier, variant.name, None, resolve_path(variant.weights, manifest_dir),
              dict(variant.files))
        for name in adapters:
            adapter = variant.adapter(name)
            check(tier, variant.name, name, resolve_path(adapter.path, manifest_dir),
                  dict(adapter.files))
    return checks


# -------------------------------------------------------------------------- suite runs
def run_case(serving: ServingPath, case: SuiteCase, policy: Policy, *, task_id: str,
             response_cache: str = "bypass") -> CaseRun:
    """One case as a task: attempts until the verifier passes or the attempts run out."""
    from policies.routing import resolve_routing

    max_attempts = resolve_routing(policy, case.family).max_attempts
    version = policy.metadata.version
    attempts: list[AttemptRecord] = []
    for k in range(1, max_attempts + 1):
        try:
            out = serving.complete(case, policy_version=version, attempt=k,
                                   response_cache=response_cache, task_id=task_id)
        except GuardrailRefusal as refused:
            if not attempts:  # nothing was measured: no verdict on this case
                return CaseRun(case.id, "error", f"attempt 1 refused: {refused}")
            return CaseRun(case.id, "refused", f"attempt {k} refused: {refused}",
                           tuple(attempts))
        except Exception as exc:  # noqa: BLE001 - recorded; the gates turn it into ERROR
            return CaseRun(case.id, "error", f"attempt {k}: {type(exc).__name__}: {exc}"[:300],
                           tuple(attempts))
        if out.policy_hash is not None and out.policy_hash != policy.content_hash:
            return CaseRun(case.id, "error", f"attempt {k} was served under policy hash "
                           f"{out.policy_hash[:12]}, not {policy.content_hash[:12]} "
                           f"(v{version})", tuple(attempts))
        verdict = check_output(case, out.text)
        attempts.append(AttemptRecord(k, out.text, out.tier, out.variant, out.adapter,
                                      out.input_tokens, out.output_tokens, out.latency_ms,
                                      out.cache, out.cost_usd, verdict.status, verdict.reason))
        if verdict.status == "error":
            return CaseRun(case.id, "error", f"attempt {k}: {verdict.reason}", tuple(attempts))
        if verdict.passed:
            return CaseRun(case.id, "pass", f"passed on attempt {k}: {verdict.reason}",
                           tuple(attempts))
    return CaseRun(case.id, "fail", f"failed all {max_attempts} attempts: "
                   f"{attempts[-1].reason if attempts else 'no attempt'}", tuple(attempts))


def run_suite(serving: ServingPath, suite: Suite, policy: Policy, *, label: str,
              task_prefix: str, response_cache: str = "bypass", concurrency: int = 1,
              progress: Progress | None = None) -> SuiteRun:
    cases = list(suite.cases)

    def one(case: SuiteCase) -> CaseRun:
        return run_case(serving, case, policy, task_id=f"{task_prefix}-{case.id}",
                        response_cache=response_cache)

    results: list[CaseRun] = []
    step = max(1, len(cases) // 5)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for i, result in enumerate(pool.map(one, cases), start=1):
            results.append(result)
            if progress and (i % step == 0 or i == len(cases)):
                passed = sum(r.passed for r in results)
                progress(f"  {label}: {i}/{len(cases)} cases, {passed} passed")
    return SuiteRun(label, policy.metadata.version, policy.content_hash,
                    tuple(c.id for c in cases), tuple(results))


# ------------------------------------------------------------------------ cache safety
def sample_cases(suite: Suite, k: int, seed: str) -> list[SuiteCase]:
    """``k`` cases chosen by hash of (seed, case id): the same sample for the same suite."""
    ranked = sorted(suite.cases,
                    key=lambda c: hashlib.sha256(f"{seed}\x00{c.id}".encode()).hexdigest())
    return sorted(ranked[:k], key=lambda c: suite.cases.index(c))


def run_cache_checks(serving: ServingPath, suite: Suite, policy: Policy, *, sample: int,
                     seed: str, task_prefix: str) -> list[CacheCheck]:
    """Per sampled case: a fresh generation (cache bypassed), then two calls that may use
    the response cache (the first fills it if needed, the second should hit it)."""
    excluded = set(policy.spec.cache.response.exclude_families)
    version = policy.metadata.version
    out: list[CacheCheck] = []
    for case in sample_cases(suite, sample, seed):
        task_id = f"{task_prefix}-{case.id}"
        try:
            fresh = serving.complete(case, policy_version=version, attempt=1,
                                     response_cache="bypass", task_id=task_id)
            served = []
            for _ in range(2):
                got = serving.complete(case, policy_version=version, attempt=1,
                                       response_cache="use", task_id=task_id)
                served.append((got.cache, got.text))
            out.append(CacheCheck(case.id, case.family, fresh.text, tuple(served),
                                  case.family in excluded))
        except Exception as exc:  # noqa: BLE001 - recorded as this check's error
            out.append(CacheCheck(case.id, case.family, "", (), case.family in excluded,
                                  f"{type(exc).__name__}: {exc}"[:300]))
    return out


# -------------------------------------------------------------------------- guardrails
def caps_set(policy: Policy) -> list[str]:
    """The per-task caps the policy sets (``contracts.guardrails.TASK_CAPS`` order)."""
    g = policy.spec.guardrails
    return [cap.value for cap in TASK_CAPS if getattr(g, cap.field) is not None]


def run_guardrail_probes(serving: ServingPath, suite: Suite, policy: Policy, *,
                         call_budget: int, task_prefix: str) -> list[ProbeResult]:
    """Drive one task past each cap the policy sets and record every call's outcome."""
    g = policy.spec.guardrails
    case = suite.cases[0]
    version = policy.metadata.version
    probes: list[ProbeResult] = []

    def call(task_id: str, attempt: int) -> tuple[ProbeCall, int, float]:
        try:
            out = serving.complete(case, policy_version=version, attempt=attempt,
                                   response_cache="bypass", task_id=task_id)
        except GuardrailRefusal as refused:
            return ProbeCall(attempt, "refused", refused.code, refused.message[:200]), 0, 0.0
        except Exception as exc:  # noqa: BLE001
            return ProbeCall(attempt, "error", None, f"{type(exc).__name__}: {exc}"[:200]), 0, 0.0
        tokens = out.input_tokens + out.output_tokens
        return ProbeCall(attempt, "served", None, "", tokens, out.cost_usd), tokens, out.cost_usd

    # The gateway refuses attempt j once j exceeds the family's resolved max_attempts,
    # which is min(routing max_attempts, guardrails.max_attempts_per_task).
    from policies.routing import resolve_routing

    effective_attempts = resolve_routing(policy, case.family).max_attempts
    if g.max_attempts_per_task is not None:
        cap = effective_attempts
        task_id = f"{task_prefix}-attempts"
        calls = []
        for attempt in range(1, cap + 2):
            c, _, _ = call(task_id, attempt)
            calls.append(c)
            if c.outcome != "served":
                break
        probes.append(ProbeResult(Cap.MAX_ATTEMPTS_PER_TASK.value, cap, tuple(calls)))

    attempt_cap = effective_attempts
    for cap_name, limit, per in ((Cap.MAX_TOKENS_PER_TASK.value, g.max_tokens_per_task, "tokens"),
                                 (Cap.MAX_USD_PER_TASK.value, g.max_usd_per_task, "cost")):
        if limit is None:
            continue
        task_id = f"{task_prefix}-{cap_name}"
        calls, spent, skipped = [], 0.0, None
        for k in range(1, call_budget + 1):
            # Repeat the last allowed attempt number: this probe is about spend, not count.
            attempt = min(k, attempt_cap) if attempt_cap else k
            c, tokens, cost = call(task_id, attempt)
            calls.append(c)
            if c.outcome != "served":
                break
            spent += tokens if per == "tokens" else cost
            if k == 1 and spent > 0 and math.ceil(limit / spent) + 1 > call_budget:
                skipped = (f"one call spends {spent:g} {per}; reaching {limit:g} needs about "
                           f"{math.ceil(limit / spent) + 1} calls > budget {call_budget}")
                break
        probes.append(ProbeResult(cap_name, limit, tuple(calls), skipped=skipped))
    return probes


# ------------------------------------------------------------------------------ runner
def _stage(errors: dict[str, str], name: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the gates that needed it become ERROR
        errors[name] = f"{type(exc).__name__}: {exc}"[:500]
        return None


def _needs(name: str, stage_errors: dict[str, str], *stages: str) -> GateResult | None:
    for s in stages:
        if s in stage_errors:
            return GateResult(name=name, phase=Phase.ERROR,
                              message=f"stage {s} failed: {stage_errors[s]}")
    return None


def run_gates(*, candidate: Policy, baseline: Policy, fleet, manifest_dir: str | Path,
              suite: Suite, serving: ServingPath, options: GateOptions = GateOptions(),
              dry_run: bool = False, progress: Progress | None = None) -> GateReport:
    """Every gate for ``candidate`` against ``baseline`` on ``suite`` through ``serving``."""
    say = progress or (lambda _msg: None)
    started = datetime.now(UTC)
    errors: dict[str, str] = {}
    key = uuid.uuid4().hex[:12]
    n = len(suite.cases)

    say(f"pinned weights: hashing the files policy v{candidate.metadata.version} names")
    file_checks = _stage(errors, "pinned_files", check_pinned_files, candidate, fleet,
                         manifest_dir) or []
    say(f"candidate v{candidate.metadata.version}: run 1 of {n} cases")
    run_a = _stage(errors, "candidate_run_1", run_suite, serving, suite, candidate,
                   label="candidate run 1", task_prefix=f"gate-{key}-c1",
                   concurrency=options.concurrency, progress=progress)
    say(f"candidate v{candidate.metadata.version}: run 2 of {n} cases")
    run_b = _stage(errors, "candidate_run_2", run_suite, serving, suite, candidate,
                   label="candidate run 2", task_prefix=f"gate-{key}-c2",
                   concurrency=options.concurrency, progress=progress)
    say(f"baseline v{baseline.metadata.version}: {n} cases")
    run_base = _stage(errors, "baseline_run", run_suite, serving, suite, baseline,
                      label="baseline", task_prefix=f"gate-{key}-base",
                      concurrency=options.concurrency, progress=progress)
    cache_on = candidate.spec.cache.response.enabled
    cache_checks = None
    if cache_on:
        say(f"cache safety: {options.cache_sample} sampled cases")
        cache_checks = _stage(errors, "cache_checks", run_cache_checks, serving, suite,
                              candidate, sample=options.cache_sample, seed=options.cache_seed,
                              task_prefix=f"gate-{key}-cache")
    caps = caps_set(candidate)
    say(f"guardrails: probing {', '.join(caps) or 'no caps'}")
    probes = _stage(errors, "guardrail_probes", run_guardrail_probes, serving, suite,
                    candidate, call_budget=options.probe_call_budget,
                    task_prefix=f"gate-{key}-probe") or []

    # The bar is the baseline's: a candidate never sets the limits it is judged by.
    limits = baseline.spec.gates
    results = [
        _needs("pinned_weights", errors, "pinned_files")
        or guarded("pinned_weights", pinned_weights_gate, file_checks),
        _needs("reproducibility", errors, "candidate_run_1", "candidate_run_2")
        or guarded("reproducibility", reproducibility_gate, run_a, run_b),
        _needs("quality_non_inferiority", errors, "candidate_run_1", "baseline_run")
        or guarded("quality_non_inferiority", non_inferiority_gate, run_a, run_base,
                   margin=limits.non_inferiority_margin, alpha=options.alpha),
        _needs("cost_latency", errors, "candidate_run_1")
        or guarded("cost_latency", cost_latency_gate, run_a,
                   p95_latency_ms=limits.p95_latency_ms,
                   max_tokens_per_case=limits.max_tokens_per_case),
        _needs("cache_safety", errors, "cache_checks")
        or guarded("cache_safety", cache_safety_gate, cache_checks, enabled=cache_on,
                   max_false_hit_rate=limits.max_cache_false_hit_rate),
        _needs("guardrails", errors, "guardrail_probes")
        or guarded("guardrails", guardrails_gate, probes, caps_set=caps),
    ]
    runs = {label: run for label, run in (("candidate_run_1", run_a), ("candidate_run_2", run_b),
                                          ("baseline", run_base)) if run is not None}
    return GateReport(
        candidate=candidate, baseline=baseline, fleet_hash=fleet.content_hash, suite=suite,
        file_checks=tuple(file_checks), runs=runs,
        cache_checks=tuple(cache_checks) if cache_checks is not None else None,
        probes=tuple(probes), results=tuple(results), overall=overall(results),
        options=options, dry_run=dry_run, started_at=started, finished_at=datetime.now(UTC),
        stage_errors=errors,
    )
