"""Each gate's edges, decided on recorded results (no serving path at all)."""

import pytest
from pydantic import ValidationError

from gates.gates import (
    GATE_NAMES,
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
from gates.records import (
    AttemptRecord,
    CacheCheck,
    CaseRun,
    FileCheck,
    ProbeCall,
    ProbeResult,
    SuiteRun,
)


def attempt(text="1", tokens=(10, 2), latency=20.0, k=1):
    return AttemptRecord(k, text, "S", "bf16", None, tokens[0], tokens[1], latency, "miss",
                         0.0, "pass", "ok")


def run(outcomes, *, label="run", texts=None, tokens=(10, 2), latencies=None, errors=(),
        missing=0):
    n = len(outcomes)
    cases = []
    for i, ok in enumerate(outcomes):
        cid = f"c{i:03d}"
        text = texts[i] if texts else ("1" if ok else "0")
        lat = latencies[i] if latencies else 20.0
        if cid in errors:
            cases.append(CaseRun(cid, "error", "attempt 1: ConnectionError: refused"))
        else:
            cases.append(CaseRun(cid, "pass" if ok else "fail", "r",
                                 (attempt(text, tokens, lat),)))
    ids = tuple(f"c{i:03d}" for i in range(n + missing))
    return SuiteRun(label, 1, "h" * 64, ids, tuple(cases))


# ------------------------------------------------------------------------ pinned weights
def test_pinned_weights_pass_and_tampered_file_named():
    good = FileCheck("S", "bf16", None, "/f/models/S/bf16/model.safetensors", "a" * 64, "a" * 64)
    bad = FileCheck("M", "int4", None, "/f/models/M/int4/model.safetensors", "a" * 64, "b" * 64,
                    "sha256 bbbbbbbbbbbb... != manifest aaaaaaaaaaaa...")
    assert pinned_weights_gate([good]).phase is Phase.PASSED
    result = pinned_weights_gate([good, bad])
    assert result.phase is Phase.FAILED
    assert "1/2 pinned files" in result.message
    assert "/f/models/M/int4/model.safetensors" in result.message
    assert result.stats["mismatches"] == 1


def test_pinned_weights_with_nothing_checked_is_error():
    assert pinned_weights_gate([]).phase is Phase.ERROR


# ----------------------------------------------------------------------- reproducibility
def test_reproducibility_passes_on_equal_outputs_and_names_first_difference():
    a = run([True] * 5)
    assert reproducibility_gate(a, run([True] * 5)).phase is Phase.PASSED
    b = run([True] * 5, texts=["1", "1", "1 ", "1", "2"])
    result = reproducibility_gate(a, b)
    assert result.phase is Phase.FAILED
    assert result.message.startswith("2/5 outputs differ, first: case c002")
    assert result.stats["differing_cases"] == ["c002", "c004"]


def test_reproducibility_partial_run_is_error_never_passed():
    a = run([True] * 5)
    result = reproducibility_gate(a, run([True] * 4, missing=1, label="candidate run 2"))
    assert result.phase is Phase.ERROR and "1/5 cases did not run (first: c004)" in result.message
    result = reproducibility_gate(a, run([True] * 5, errors=("c001",)))
    assert result.phase is Phase.ERROR and "case c001" in result.message


# ------------------------------------------------------------------- non-inferiority
def test_non_inferiority_identical_on_a_large_suite_passes():
    outcomes = [i % 4 != 0 for i in range(212)]
    result = non_inferiority_gate(run(outcomes), run(outcomes), margin=0.02)
    assert result.phase is Phase.PASSED
    assert "pass rate 0.750 vs 0.750 on 212 cases" in result.message
    assert result.stats["lower_bound"] > -0.02


def test_non_inferiority_small_suite_is_inconclusive_and_says_how_many():
    outcomes = [True] * 30
    result = non_inferiority_gate(run(outcomes), run(outcomes), margin=0.02)
    assert result.phase is Phase.INCONCLUSIVE
    assert "too small" in result.message and ">= 183 cases" in result.message


def test_non_inferiority_clearly_worse_fails_with_numbers():
    base = [True] * 150 + [False] * 60
    cand = [True] * 100 + [False] * 110
    result = non_inferiority_gate(run(cand), run(base), margin=0.02)
    assert result.phase is Phase.FAILED
    assert "pass rate 0.476 vs 0.714" in result.message and "diff -0.238" in result.message
    assert result.stats["baseline_only"] == 50 and result.stats["upper_bound"] < -0.02


def test_non_inferiority_partial_baseline_is_error():
    result = non_inferiority_gate(run([True] * 10), run([True] * 9, missing=1, label="baseline"),
                                  margin=0.02)
    assert result.phase is Phase.ERROR and "baseline run is partial" in result.message


# --------------------------------------------------------------------- cost and latency
def test_cost_latency_within_limits():
    result = cost_latency_gate(run([True] * 20, latencies=[10.0 * i for i in range(1, 21)]),
                               p95_latency_ms=500, max_tokens_per_case=50)
    assert result.phase is Phase.PASSED
    assert "tokens/case max 12 <= limit 50" in result.message
    assert "p95 190 ms <= limit 500 ms" in result.message
    assert result.timing["p95_case_latency_ms"] == 190.0


def test_cost_latency_over_limits_fails_with_numbers():
    lat = [100.0] * 19 + [812.0]
    result = cost_latency_gate(run([True] * 20, latencies=lat, tokens=(10, 2)),
                               p95_latency_ms=700, max_tokens_per_case=None)
    assert result.phase is Phase.PASSED  # p95 of 20 values (nearest rank) is the 19th: 100
    lat = [100.0] * 18 + [812.0, 900.0]
    result = cost_latency_gate(run([True] * 20, latencies=lat, tokens=(100, 30)),
                               p95_latency_ms=700, max_tokens_per_case=120)
    assert result.phase is Phase.FAILED
    assert "p95 812 ms > limit 700 ms" in result.message
    assert "tokens/case max 130 > limit 120" in result.message


def test_cost_latency_partial_run_is_error():
    assert cost_latency_gate(run([True] * 3, errors=("c000",)), p95_latency_ms=1,
                             max_tokens_per_case=1).phase is Phase.ERROR


# ------------------------------------------------------------------------- cache safety
def test_cache_off_is_not_applicable_and_says_so():
    result = cache_safety_gate(None, enabled=False, max_false_hit_rate=0.01)
    assert result.phase is Phase.PASSED and "not applicable" in result.message


def test_cache_hits_equal_to_fresh_pass():
    checks = [CacheCheck(f"c{i}", "f", "7", (("miss", "7"), ("response", "7"))) for i in range(10)]
    result = cache_safety_gate(checks, enabled=True, max_false_hit_rate=0.01)
    assert result.phase is Phase.PASSED and "0/10 cases served from the cache differ" in result.message


def test_cache_false_hit_rate_over_limit_fails():
    checks = [CacheCheck(f"c{i}", "f", "7", (("miss", "7"), ("response", "7" if i else "8")))
              for i in range(10)]
    result = cache_safety_gate(checks, enabled=True, max_false_hit_rate=0.05)
    assert result.phase is Phase.FAILED
    assert "1/10 cases served from the cache differ" in result.message and "rate 0.100 > limit 0.05" \
        in result.message and "case c0" in result.message


def test_cache_hit_for_excluded_family_fails_even_if_equal():
    checks = [CacheCheck("c0", "secret", "7", (("response", "7"),), family_excluded=True)] + [
        CacheCheck(f"c{i}", "f", "7", (("response", "7"),)) for i in range(1, 200)]
    result = cache_safety_gate(checks, enabled=True, max_false_hit_rate=0.05)
    assert result.phase is Phase.FAILED and "excluded" in result.message


def test_cache_without_any_hit_is_inconclusive_and_errors_are_error():
    checks = [CacheCheck("c0", "f", "7", (("miss", "7"), ("miss", "7")))]
    assert cache_safety_gate(checks, enabled=True, max_false_hit_rate=0.01).phase \
        is Phase.INCONCLUSIVE
    broken = [CacheCheck("c0", "f", "", (), error="TimeoutError: read")]
    assert cache_safety_gate(broken, enabled=True, max_false_hit_rate=0.01).phase is Phase.ERROR


# --------------------------------------------------------------------------- guardrails
def served(k, tokens=30):
    return ProbeCall(k, "served", tokens=tokens)


def test_attempt_cap_holds():
    probe = ProbeResult("max_attempts_per_task", 3, (served(1), served(2), served(3),
                        ProbeCall(4, "refused", "max_attempts_per_task", "attempt 4 > 3")))
    result = guardrails_gate([probe], caps_set=["max_attempts_per_task"])
    assert result.phase is Phase.PASSED and "max_attempts_per_task=3" in result.message


def test_attempt_beyond_cap_served_fails():
    probe = ProbeResult("max_attempts_per_task", 3, tuple(served(k) for k in range(1, 5)))
    result = guardrails_gate([probe], caps_set=["max_attempts_per_task"])
    assert result.phase is Phase.FAILED and "attempt 4 beyond cap 3 was served" in result.message


def test_wrong_refusal_code_fails_and_early_refusal_by_other_cap_is_inconclusive():
    wrong = ProbeResult("max_attempts_per_task", 2, (served(1), served(2),
                        ProbeCall(3, "refused", "max_usd_per_task")))
    assert guardrails_gate([wrong], caps_set=["max_attempts_per_task"]).phase is Phase.FAILED
    early = ProbeResult("max_attempts_per_task", 3, (served(1),
                        ProbeCall(2, "refused", "max_tokens_per_task")))
    assert guardrails_gate([early], caps_set=["max_attempts_per_task"]).phase \
        is Phase.INCONCLUSIVE


def test_a_cap_stopped_first_by_another_cap_of_the_candidate_holds():
    tokens = ProbeResult("max_tokens_per_task", 134, (served(1, 48), served(2, 48),
                         ProbeCall(3, "refused", "max_usd_per_task")))
    usd = ProbeResult("max_usd_per_task", 0.001, (ProbeCall(1, "served", cost_usd=0.0006),
                      ProbeCall(2, "served", cost_usd=0.0006),
                      ProbeCall(3, "refused", "max_usd_per_task")))
    result = guardrails_gate([tokens, usd], caps_set=["max_tokens_per_task", "max_usd_per_task"])
    assert result.phase is Phase.PASSED, result.message
    assert result.stats["verdicts"] == {"max_tokens_per_task": "pass", "max_usd_per_task": "pass"}
    # ...but not when the refusing cap is not one the candidate sets (nothing probes it).
    alone = guardrails_gate([tokens], caps_set=["max_tokens_per_task"])
    assert alone.phase is Phase.INCONCLUSIVE


def test_token_cap_refusal_after_spend_passes_and_overspend_fails():
    ok = ProbeResult("max_tokens_per_task", 60, (served(1), served(2),
                     ProbeCall(3, "refused", "max_tokens_per_task")))
    result = guardrails_gate([ok], caps_set=["max_tokens_per_task"])
    assert result.phase is Phase.PASSED
    over = ProbeResult("max_tokens_per_task", 60, (served(1), served(2), served(3)))
    result = guardrails_gate([over], caps_set=["max_tokens_per_task"])
    assert result.phase is Phase.FAILED and "served after the task spent 60 >= cap 60" \
        in result.message


def test_guardrails_not_applicable_skipped_missing_and_error():
    assert guardrails_gate([], caps_set=[]).phase is Phase.PASSED
    assert guardrails_gate([], caps_set=["max_tokens_per_task"]).phase is Phase.ERROR
    skipped = ProbeResult("max_usd_per_task", 5.0, (served(1),), skipped="needs 1e6 calls")
    assert guardrails_gate([skipped], caps_set=["max_usd_per_task"]).phase is Phase.INCONCLUSIVE
    attempts = ProbeResult("max_attempts_per_task", 1, (served(1),
                           ProbeCall(2, "refused", "max_attempts_per_task")))
    result = guardrails_gate([attempts, skipped],
                             caps_set=["max_attempts_per_task", "max_usd_per_task"])
    assert result.phase is Phase.PASSED and "max_usd_per_task not probed" in result.message
    errored = ProbeResult("max_attempts_per_task", 1, (ProbeCall(1, "error", None, "refused"),))
    assert guardrails_gate([errored], caps_set=["max_attempts_per_task"]).phase is Phase.ERROR


# ------------------------------------------------------------------- fail-closed rules
def test_guarded_turns_exceptions_into_error():
    def boom(*_a):
        raise KeyError("c007")

    result = guarded("reproducibility", boom, 1)
    assert result.phase is Phase.ERROR and "KeyError" in result.message and "c007" in result.message
    assert guarded("x", lambda: "not a result").phase is Phase.ERROR


def _all(phase=Phase.PASSED):
    return [GateResult(name=n, phase=phase, message="m") for n in GATE_NAMES]


def test_overall_is_passed_only_when_every_gate_passed():
    assert overall(_all()) is Phase.PASSED
    results = _all()
    results[2] = GateResult(name=results[2].name, phase=Phase.INCONCLUSIVE, message="m")
    assert overall(results) is Phase.INCONCLUSIVE
    results[3] = GateResult(name=results[3].name, phase=Phase.FAILED, message="m")
    assert overall(results) is Phase.FAILED
    results[0] = GateResult(name=results[0].name, phase=Phase.ERROR, message="m")
    assert overall(results) is Phase.ERROR


def test_overall_with_a_gate_missing_is_error():
    assert overall(_all()[:-1]) is Phase.ERROR
    assert overall([]) is Phase.ERROR


def test_gate_result_is_frozen_and_strict():
    r = GateResult(name="x", phase="PASSED", message="m")
    with pytest.raises(ValidationError):
        r.phase = Phase.FAILED
    with pytest.raises(ValidationError):
        GateResult(name="x", phase="MAYBE", message="m")


def test_reproducibility_compares_outcomes_too():
    a = run([True] * 3)
    refused = CaseRun("c001", "refused", "attempt 2 refused: max_tokens_per_task", (attempt(),))
    b = SuiteRun("run", 1, "h" * 64, a.case_ids, (a.cases[0], refused, a.cases[2]))
    result = reproducibility_gate(a, b)
    assert result.phase is Phase.FAILED and "case c001 (pass vs refused" in result.message


def test_cache_figures_do_not_depend_on_a_warm_cache():
    cold = [CacheCheck(f"c{i}", "f", "7", (("miss", "7"), ("response", "7"))) for i in range(5)]
    warm = [CacheCheck(f"c{i}", "f", "7", (("response", "7"), ("response", "7")))
            for i in range(5)]
    a = cache_safety_gate(cold, enabled=True, max_false_hit_rate=0.01)
    b = cache_safety_gate(warm, enabled=True, max_false_hit_rate=0.01)
    assert (a.phase, a.message, a.stats) == (b.phase, b.message, b.stats)
