"""The gate decisions: pure functions from recorded observations to a ``GateResult``.

Every gate returns one of PASSED, FAILED, ERROR or INCONCLUSIVE with a message that carries
its numbers and the statistics behind it. Fail closed: an exception inside a gate is ERROR
(``guarded``), a partial run is never PASSED, and ``overall`` is PASSED only when every gate
is. Wall-clock figures go in ``timing`` (see ``gates.evidence`` for why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import Field

from contracts.documents import Strict
from contracts.guardrails import CAPS, Cap
from contracts.phase import Phase
from gates import stats
from gates.records import CacheCheck, FileCheck, ProbeResult, SuiteRun

__all__ = [
    "GATE_NAMES",
    "GateResult",
    "Phase",
    "cache_safety_gate",
    "cost_latency_gate",
    "guarded",
    "guardrails_gate",
    "non_inferiority_gate",
    "overall",
    "pinned_weights_gate",
    "reproducibility_gate",
]

GATE_NAMES = ("pinned_weights", "reproducibility", "quality_non_inferiority", "cost_latency",
              "cache_safety", "guardrails")


class GateResult(Strict):
    name: str
    phase: Phase
    message: str
    stats: dict[str, Any] = Field(default_factory=dict)
    timing: dict[str, Any] = Field(
        default_factory=dict, description="wall-clock figures (differ between reruns)"
    )

    @property
    def passed(self) -> bool:
        return self.phase is Phase.PASSED

    def line(self) -> str:
        return f"{self.name:<24} {self.phase.value:<12} {self.message}"


def _result(name: str, phase: Phase, message: str, stats_: dict[str, Any] | None = None,
            timing: dict[str, Any] | None = None) -> GateResult:
    return GateResult(name=name, phase=phase, message=message, stats=stats_ or {},
                      timing=timing or {})


def guarded(name: str, decide: Callable[..., GateResult], *args: Any, **kwargs: Any
            ) -> GateResult:
    """Run a gate; any exception becomes ERROR naming it (fail closed, never a crash)."""
    try:
        result = decide(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure must become a recorded ERROR
        return _result(name, Phase.ERROR, f"gate raised {type(exc).__name__}: {exc}"[:500])
    if not isinstance(result, GateResult):
        return _result(name, Phase.ERROR, f"gate returned {type(result).__name__}, "
                                          "not a GateResult")
    return result


def overall(results: Iterable[GateResult], expected: Sequence[str] = GATE_NAMES) -> Phase:
    """PASSED only if every expected gate ran and PASSED. Otherwise the worst phase:
    ERROR (or a gate missing) before FAILED before INCONCLUSIVE."""
    results = list(results)
    names = {r.name for r in results}
    if not results or any(n not in names for n in expected):
        return Phase.ERROR
    phases = {r.phase for r in results}
    for phase in (Phase.ERROR, Phase.FAILED, Phase.INCONCLUSIVE):
        if phase in phases:
            return phase
    return Phase.PASSED


# ------------------------------------------------------------------------ pinned weights
def pinned_weights_gate(checks: Sequence[FileCheck]) -> GateResult:
    name = "pinned_weights"
    if not checks:
        return _result(name, Phase.ERROR, "no weight or adapter file was checked")
    bad = [c for c in checks if not c.ok]
    parts = sorted({(c.tier, c.variant, c.adapter) for c in checks}, key=str)
    st = {"files_checked": len(checks), "mismatches": len(bad),
          "variants": [f"{t}/{v}" + (f"+{a}" if a else "") for t, v, a in parts]}
    if bad:
        first = bad[0]
        what = f"{first.tier}/{first.variant}" + (f" adapter {first.adapter}" if first.adapter
                                                   else "")
        return _result(name, Phase.FAILED,
                       f"{len(bad)}/{len(checks)} pinned files do not match the manifest; "
                       f"first: {first.path} ({what}): {first.problem}", st)
    return _result(name, Phase.PASSED,
                   f"{len(checks)}/{len(checks)} files match the manifest sha256 "
                   f"({len(parts)} variant(s)/adapter(s))", st)


# ----------------------------------------------------------------------- reproducibility
def reproducibility_gate(first: SuiteRun, second: SuiteRun) -> GateResult:
    name = "reproducibility"
    for run in (first, second):
        problem = run.problem()
        if problem:
            return _result(name, Phase.ERROR, f"{problem}: outputs cannot be compared")
    a, b = first.by_id(), second.by_id()
    ids = list(first.case_ids)
    differ = [i for i in ids if (a[i].status, a[i].texts) != (b[i].status, b[i].texts)]
    st = {"cases": len(ids), "differ": len(differ), "differing_cases": differ[:20]}
    if differ:
        i = differ[0]
        detail = (_first_difference(a[i].texts, b[i].texts) if a[i].texts != b[i].texts
                  else f"{a[i].status} vs {b[i].status}: {b[i].reason}"[:160])
        return _result(name, Phase.FAILED, f"{len(differ)}/{len(ids)} outputs differ, first: "
                                           f"case {i} ({detail})", st)
    n_attempts = sum(len(a[i].attempts) for i in ids)
    return _result(name, Phase.PASSED, f"0/{len(ids)} outputs differ: all {n_attempts} attempt "
                                       "outputs equal byte for byte across two runs", st)


def _first_difference(x: tuple[str, ...], y: tuple[str, ...]) -> str:
    if len(x) != len(y):
        return f"{len(x)} vs {len(y)} attempts"
    for k, (s, t) in enumerate(zip(x, y), start=1):
        if s != t:
            return f"attempt {k}: {s[:30]!r} vs {t[:30]!r}"
    return "equal"  # pragma: no cover


# ------------------------------------------------------------------- non-inferiority
def non_inferiority_gate(candidate: SuiteRun, baseline: SuiteRun, *, margin: float,
                         alpha: float = 0.05) -> GateResult:
    """Candidate pass rate vs baseline's on the same cases (paired, exact bounds)."""
    name = "quality_non_inferiority"
    for run in (candidate, baseline):
        problem = run.problem()
        if problem:
            return _result(name, Phase.ERROR, problem)
    if list(candidate.case_ids) != list(baseline.case_ids):
        return _result(name, Phase.ERROR, "candidate and baseline ran different cases")
    a, b = candidate.by_id(), baseline.by_id()
    ids = list(candidate.case_ids)
    counts = stats.paired_counts([a[i].passed for i in ids], [b[i].passed for i in ids])
    ni = stats.non_inferiority(counts, margin, alpha)
    st = {
        "cases": counts.n, "candidate_passed": counts.both + counts.candidate_only,
        "baseline_passed": counts.both + counts.baseline_only,
        "candidate_only": counts.candidate_only, "baseline_only": counts.baseline_only,
        "candidate_rate": round(counts.candidate_rate, 6),
        "baseline_rate": round(counts.baseline_rate, 6),
        "difference": round(counts.difference, 6), "lower_bound": round(ni.lower, 6),
        "upper_bound": round(ni.upper, 6), "margin": margin, "alpha": alpha,
        "method": "paired difference, exact Clopper-Pearson bounds on both discordant shares "
                  "at alpha/2 (Bonferroni), one-sided",
        "min_cases_for_margin": stats.min_cases_for_margin(margin, alpha) if margin > 0 else None,
    }
    head = (f"pass rate {counts.candidate_rate:.3f} vs {counts.baseline_rate:.3f} on "
            f"{counts.n} cases (diff {counts.difference:+.3f}, {1 - alpha:.0%} bounds "
            f"[{ni.lower:+.3f}, {ni.upper:+.3f}], margin {margin:.3f})")
    if ni.decision == "non_inferior":
        return _result(name, Phase.PASSED, f"{head}: lower bound > -margin", st)
    if ni.decision == "inferior":
        return _result(name, Phase.FAILED, f"{head}: upper bound < -margin, candidate is worse",
                       st)
    need = st["min_cases_for_margin"]
    hint = f"; showing this margin needs >= {need} cases" if need and counts.n < need else ""
    return _result(name, Phase.INCONCLUSIVE,
                   f"{head}: bounds straddle -margin, suite too small to decide{hint}", st)


# --------------------------------------------------------------------- cost and latency
def cost_latency_gate(candidate: SuiteRun, *, p95_latency_ms: float | None,
                      max_tokens_per_case: float | None) -> GateResult:
    """Measured tokens per case (all attempts: input + output) and the p95 of per-case
    latency (the sum of its attempts' latencies) within the policy's limits."""
    name = "cost_latency"
    problem = candidate.problem()
    if problem:
        return _result(name, Phase.ERROR, problem)
    cases = list(candidate.cases)
    tokens = [c.tokens for c in cases]
    latencies = [c.latency_ms for c in cases]
    calls = [a.latency_ms for c in cases for a in c.attempts]
    max_tokens = max(tokens)
    worst = cases[tokens.index(max_tokens)].case_id
    p95 = stats.percentile(latencies, 95)
    st = {"cases": len(cases), "tokens_total": sum(tokens), "tokens_max_per_case": max_tokens,
          "tokens_mean_per_case": round(sum(tokens) / len(tokens), 3),
          "tokens_worst_case": worst, "max_tokens_per_case": max_tokens_per_case,
          "p95_latency_ms_limit": p95_latency_ms,
          "attempts_total": sum(len(c.attempts) for c in cases)}
    timing = {"p95_case_latency_ms": round(p95, 3),
              "p50_case_latency_ms": round(stats.percentile(latencies, 50), 3),
              "p95_call_latency_ms": round(stats.percentile(calls, 95), 3) if calls else None}
    failures = []
    if max_tokens_per_case is not None and max_tokens > max_tokens_per_case:
        failures.append(f"tokens/case max {max_tokens} > limit {max_tokens_per_case:g} "
                        f"(case {worst})")
    if p95_latency_ms is not None and p95 > p95_latency_ms:
        failures.append(f"p95 {p95:.0f} ms > limit {p95_latency_ms:g} ms")
    st["over_limit"] = [f.split(" ")[0] for f in failures]
    if failures:
        return _result(name, Phase.FAILED, "; ".join(failures), st, timing)
    tok = (f"tokens/case max {max_tokens} <= limit {max_tokens_per_case:g}"
           if max_tokens_per_case is not None else f"tokens/case max {max_tokens} (no limit)")
    lat = (f"p95 {p95:.0f} ms <= limit {p95_latency_ms:g} ms" if p95_latency_ms is not None
           else f"p95 {p95:.0f} ms (no limit)")
    return _result(name, Phase.PASSED, f"{tok}; {lat}", st, timing)


# ------------------------------------------------------------------------- cache safety
def cache_safety_gate(checks: Sequence[CacheCheck] | None, *, enabled: bool,
                      max_false_hit_rate: float) -> GateResult:
    """Responses served from the response cache must equal a fresh generation.

    Counted per sampled case (so a cache already warm from an earlier run gives the same
    figures): a case is a hit when any of its calls was served from the cache, and a false
    hit when any such response differs from its fresh generation, or its family is one the
    policy excludes from the cache. The false-hit rate is false hits over hits.
    """
    name = "cache_safety"
    if not enabled:
        return _result(name, Phase.PASSED, "not applicable: the candidate has the response "
                                           "cache off (nothing is served from it)",
                       {"applicable": False})
    if not checks:
        return _result(name, Phase.ERROR, "response cache is on but no case was sampled")
    errors = [c for c in checks if c.error]
    if errors:
        return _result(name, Phase.ERROR, f"{len(errors)}/{len(checks)} sampled cases failed "
                                          f"(first: case {errors[0].case_id}: {errors[0].error})")
    hits = false_hits = excluded_hits = 0
    first_bad = None
    for c in checks:
        cached = [text for status, text in c.served if status == "response"]
        if not cached:
            continue
        hits += 1
        wrong = [t for t in cached if t != c.fresh_text]
        if c.family_excluded:
            excluded_hits += 1
        if wrong or c.family_excluded:
            false_hits += 1
            if first_bad is None:
                why = ("its family is excluded from the response cache" if c.family_excluded
                       else f"cached {wrong[0][:30]!r} != fresh {c.fresh_text[:30]!r}")
                first_bad = f"case {c.case_id}: {why}"
    st = {"applicable": True, "sampled": len(checks), "cache_hits": hits,
          "false_hits": false_hits, "excluded_family_hits": excluded_hits,
          "max_false_hit_rate": max_false_hit_rate}
    if hits == 0:
        return _result(name, Phase.INCONCLUSIVE, f"0 of {len(checks)} sampled cases were "
                                                 "served from the cache: nothing to check", st)
    rate = false_hits / hits
    st["false_hit_rate"] = round(rate, 6)
    head = (f"{false_hits}/{hits} cases served from the cache differ from a fresh generation "
            f"(rate {rate:.3f}")
    if rate > max_false_hit_rate or excluded_hits:
        return _result(name, Phase.FAILED, f"{head} > limit {max_false_hit_rate:g}); first: "
                                           f"{first_bad}", st)
    return _result(name, Phase.PASSED, f"{head} <= limit {max_false_hit_rate:g}) on "
                                       f"{len(checks)} sampled cases", st)


# --------------------------------------------------------------------------- guardrails
GUARDRAIL_CODES = frozenset(CAPS)  # every refusal code (contracts.guardrails)


def guardrails_gate(probes: Sequence[ProbeResult], *, caps_set: Sequence[str]) -> GateResult:
    """Each cap the candidate sets must hold on calls built to exceed it.

    - max_attempts_per_task: attempts 1..cap served, attempt cap+1 refused with that code;
    - max_tokens_per_task / max_usd_per_task: calls on one task until refused; no call may
      be served once the task's spend has reached the cap, and one must be refused with the
      cap's code;
    - a probe stopped first by another cap the candidate also sets (and which is probed on
      its own) holds: under that policy no task can reach the looser cap.
    """
    name = "guardrails"
    if not caps_set:
        return _result(name, Phase.PASSED, "not applicable: the candidate sets no per-task caps",
                       {"applicable": False})
    by_cap = {p.cap: p for p in probes}
    missing = [c for c in caps_set if c not in by_cap]
    if missing:
        return _result(name, Phase.ERROR, f"no probe ran for cap {missing[0]}")
    verdicts: dict[str, str] = {}
    failures: list[str] = []
    inconclusive: list[str] = []
    errors: list[str] = []
    skipped: list[str] = []
    for cap in caps_set:
        p = by_cap[cap]
        if p.error:
            errors.append(f"{cap}: {p.error}")
            verdicts[cap] = "error"
            continue
        if p.skipped:
            verdicts[cap] = "not probed"
            skipped.append(f"{cap} not probed ({p.skipped})")
            continue
        bad = [c for c in p.calls if c.outcome == "error"]
        if bad:
            errors.append(f"{cap}: attempt {bad[0].attempt}: {bad[0].message}")
            verdicts[cap] = "error"
            continue
        verdict, detail = (_attempt_cap(p) if cap == Cap.MAX_ATTEMPTS_PER_TASK
                           else _spend_cap(p, "tokens" if cap == Cap.MAX_TOKENS_PER_TASK
                                           else "cost_usd"))
        refusal = next((c for c in p.calls if c.outcome == "refused"), None)
        if (verdict == "inconclusive" and refusal is not None and refusal.code != cap
                and refusal.code in caps_set):
            # Another cap of the same candidate, probed on its own, stopped the task before
            # this one could bind: no task can exceed this cap under this policy.
            verdict, detail = "pass", (f"held: the stricter {refusal.code} refused attempt "
                                       f"{refusal.attempt} before the cap {p.limit:g} bound")
        verdicts[cap] = verdict
        {"fail": failures, "inconclusive": inconclusive, "pass": []}[verdict].append(
            f"{cap}: {detail}")
    st = {"applicable": True, "caps": list(caps_set), "verdicts": verdicts,
          "calls": {p.cap: len(p.calls) for p in probes}}
    probed = [c for c in caps_set if verdicts.get(c) != "not probed"]
    if not probed:
        return _result(name, Phase.INCONCLUSIVE, "; ".join(skipped), st)
    note = f"; {'; '.join(skipped)}" if skipped else ""
    if errors:
        return _result(name, Phase.ERROR, "; ".join(errors) + note, st)
    if failures:
        return _result(name, Phase.FAILED, "; ".join(failures) + note, st)
    if inconclusive:
        return _result(name, Phase.INCONCLUSIVE, "; ".join(inconclusive) + note, st)
    return _result(name, Phase.PASSED, f"{len(probed)}/{len(probed)} probed caps held: "
                   + ", ".join(f"{c}={by_cap[c].limit:g}" for c in probed) + note, st)


def _attempt_cap(p: ProbeResult) -> tuple[str, str]:
    limit = int(p.limit)
    within = [c for c in p.calls if c.attempt <= limit]
    beyond = [c for c in p.calls if c.attempt > limit]
    refused_early = [c for c in within if c.outcome == "refused"]
    if refused_early:
        c = refused_early[0]
        if c.code == Cap.MAX_ATTEMPTS_PER_TASK:
            return "fail", f"attempt {c.attempt} of cap {limit} refused as over the cap"
        return "inconclusive", (f"attempt {c.attempt} of cap {limit} refused by {c.code} "
                                "before the cap could be reached")
    if not beyond:
        return "inconclusive", f"no attempt beyond the cap {limit} was made"
    c = beyond[0]
    if c.outcome != "refused":
        return "fail", f"attempt {c.attempt} beyond cap {limit} was served"
    if c.code != Cap.MAX_ATTEMPTS_PER_TASK:
        return "fail", (f"attempt {c.attempt} beyond cap {limit} refused with {c.code!r}, "
                        f"not {Cap.MAX_ATTEMPTS_PER_TASK}")
    return "pass", f"attempt {c.attempt} refused (cap {limit})"


def _spend_cap(p: ProbeResult, measure: str) -> tuple[str, str]:
    code = p.cap
    spent = 0.0
    for c in p.calls:
        if c.outcome == "served":
            if spent >= p.limit:
                return "fail", (f"attempt {c.attempt} served after the task spent "
                                f"{spent:g} >= cap {p.limit:g} {measure}")
            spent += c.tokens if measure == "tokens" else c.cost_usd
            continue
        if c.code == code:
            return "pass", (f"refused at attempt {c.attempt} after {spent:g} {measure} "
                            f"(cap {p.limit:g})")
        return "inconclusive", (f"attempt {c.attempt} refused by {c.code} after {spent:g} "
                                f"{measure}, before the {code} cap {p.limit:g} was reached")
    return "inconclusive", f"no refusal within {len(p.calls)} calls ({spent:g} {measure} spent)"
