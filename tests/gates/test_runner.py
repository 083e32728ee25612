"""The runner end to end through the in-process fake serving path."""

from pathlib import Path

from gates_testkit import competent, make_policy, tiny_suite

from contracts.manifest import load_fleet
from gates.fakes import FakeServingPath
from gates.gates import Phase
from gates.runner import (
    GateOptions,
    check_pinned_files,
    pinned_targets,
    run_case,
    run_gates,
    sample_cases,
)
from gates.suite import ProgramVerifier, SuiteCase

OPTS = GateOptions(cache_sample=10)


def gate(fleet_path, suite, candidate, baseline, **fake):
    serving = FakeServingPath(policies={baseline.metadata.version: baseline,
                                        candidate.metadata.version: candidate},
                              answer=fake.pop("answer", competent), **fake)
    report = run_gates(candidate=candidate, baseline=baseline, fleet=load_fleet(fleet_path),
                       manifest_dir=fleet_path.parent, suite=suite, serving=serving,
                       options=OPTS)
    return report, {r.name: r for r in report.results}, serving


def test_active_against_itself_passes_every_gate(fleet_path, suite):
    policy = make_policy(1)
    report, gates, _ = gate(fleet_path, suite, policy, policy)
    assert report.overall is Phase.PASSED, [r.line() for r in report.results]
    assert gates["quality_non_inferiority"].stats["candidate_rate"] == 1.0
    assert gates["cache_safety"].stats == {"applicable": False}
    assert gates["guardrails"].message.startswith("1/1 probed caps held")
    assert not report.blocking


def test_int4_variant_that_degrades_quality_fails_with_numbers(fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, quantization={"M": "int4", "L": "int4"})
    report, gates, _ = gate(fleet_path, suite, cand, base)
    ni = gates["quality_non_inferiority"]
    assert ni.phase is Phase.FAILED, ni.message
    assert "vs 1.000 on 90 cases (diff -0.6" in ni.message  # "0" is right for a few cases
    assert report.overall is Phase.FAILED and report.blocking
    assert gates["reproducibility"].phase is Phase.PASSED


def test_tampered_weight_file_fails_naming_the_file(fleet_path, suite):
    target = fleet_path.parent / "models" / "M" / "int4" / "model.safetensors"
    target.write_text("tampered")
    cand = make_policy(2, quantization={"M": "int4"})
    report, gates, _ = gate(fleet_path, suite, cand, make_policy(1))
    result = gates["pinned_weights"]
    assert result.phase is Phase.FAILED
    assert str(target) in result.message and "1/6 pinned files" in result.message
    assert report.overall is Phase.FAILED


def test_pinned_targets_follow_quantization_and_distillation(fleet_path):
    fleet = load_fleet(fleet_path)
    cand = make_policy(2, quantization={"L": "int4"},
                       distillation={"list_ops": {"tier": "S", "adapter": "list-v1"}})
    assert pinned_targets(cand, fleet) == [("S", "bf16", ("list-v1",)), ("M", "bf16", ()),
                                           ("L", "int4", ())]
    checks = check_pinned_files(cand, fleet, fleet_path.parent)
    assert len(checks) == 7 and all(c.ok for c in checks)
    assert [c.adapter for c in checks].count("list-v1") == 1
    adapter = fleet.tier("S").variant("bf16").adapters[0]
    (fleet_path.parent / adapter.path / next(iter(adapter.files))).unlink()
    missing = [c for c in check_pinned_files(cand, fleet, fleet_path.parent) if not c.ok]
    assert len(missing) == 1 and missing[0].problem == "missing"


def test_nondeterministic_outputs_fail_reproducibility(fleet_path, suite):
    policy = make_policy(1)
    flaky = frozenset({suite.cases[4].id, suite.cases[9].id})
    _, gates, _ = gate(fleet_path, suite, policy, policy, flaky_cases=flaky)
    result = gates["reproducibility"]
    assert result.phase is Phase.FAILED
    assert result.message.startswith(f"2/90 outputs differ, first: case {suite.cases[4].id}")


def test_partial_run_is_never_passed(fleet_path, suite):
    policy = make_policy(1)
    report, gates, _ = gate(fleet_path, suite, policy, policy,
                            fail_cases=frozenset({suite.cases[7].id}))
    for name in ("reproducibility", "quality_non_inferiority", "cost_latency"):
        assert gates[name].phase is Phase.ERROR, gates[name].message
        assert suite.cases[7].id in gates[name].message
    assert report.overall is Phase.ERROR and report.blocking


def test_a_stage_that_raises_makes_its_gates_error(fleet_path, suite):
    policy = make_policy(1)

    class Exploding:
        def complete(self, *a, **k):
            raise AssertionError("unreachable")

    report = run_gates(candidate=policy, baseline=policy, fleet=load_fleet(fleet_path),
                       manifest_dir=Path("/nonexistent"), suite=suite, serving=Exploding(),
                       options=OPTS)
    assert report.overall is Phase.ERROR
    assert all(r.phase is not Phase.PASSED for r in report.results if r.name != "cache_safety")


def test_cache_safety_passes_on_a_correct_cache_and_fails_on_a_wrong_one(fleet_path, suite):
    base = make_policy(1)
    cand = make_policy(2, cache={"response": {"enabled": True}})
    _, gates, _ = gate(fleet_path, suite, cand, base)
    assert gates["cache_safety"].phase is Phase.PASSED, gates["cache_safety"].message
    assert gates["cache_safety"].stats["cache_hits"] == 10
    _, gates, _ = gate(fleet_path, suite, cand, base, corrupt_cache=True)
    result = gates["cache_safety"]
    assert result.phase is Phase.FAILED and "10/10 cases served from the cache differ" in result.message


def test_guardrail_that_does_not_hold_fails(fleet_path, suite):
    policy = make_policy(1, guardrails={"max_attempts_per_task": 2})
    _, gates, _ = gate(fleet_path, suite, policy, policy, ignore_attempt_cap=True)
    assert gates["guardrails"].phase is Phase.FAILED
    assert "attempt 3 beyond cap 2 was served" in gates["guardrails"].message


def test_token_cap_is_probed(fleet_path, suite):
    policy = make_policy(1, guardrails={"max_attempts_per_task": 3, "max_tokens_per_task": 60})
    _, gates, _ = gate(fleet_path, suite, policy, policy)
    result = gates["guardrails"]
    assert result.phase is Phase.PASSED, result.message
    assert result.stats["verdicts"] == {"max_attempts_per_task": "pass",
                                        "max_tokens_per_task": "pass"}


def test_hung_program_check_is_killed_and_reported(fleet_path):
    hang = ProgramVerifier(source="import time\ntime.sleep(60)\n", timeout_s=1, cpu_s=1)
    cases = tuple(SuiteCase(id=f"p{i}", family="expr_eval", difficulty=1, prompt=f"{i}\n=",
                            expected="1", verifier=hang) for i in range(1))
    policy = make_policy(1)
    serving = FakeServingPath(policies={1: policy}, answer=lambda *a: "1")
    case_run = run_case(serving, cases[0], policy, task_id="t")
    assert case_run.status == "error"
    assert "killed after the wall-clock timeout of 1 s" in case_run.reason


def test_served_under_another_policy_is_an_error(fleet_path):
    policy = make_policy(1)
    other = make_policy(2, routing={"router": "fixed", "escalation": ["M", "L"]})
    serving = FakeServingPath(policies={1: other}, answer=competent)
    case_run = run_case(serving, tiny_suite(1).cases[0], policy, task_id="t")
    assert case_run.status == "error" and "served under policy hash" in case_run.reason


def test_escalation_records_every_attempt():
    policy = make_policy(1)
    serving = FakeServingPath(policies={1: policy}, answer=competent)
    case = SuiteCase(id="hard", family="expr_eval", difficulty=3, prompt="eval: 1\n=",
                     expected="1", verifier={"kind": "reference", "spec": "int"})
    result = run_case(serving, case, policy, task_id="t")
    assert result.passed and [a.tier for a in result.attempts] == ["S", "M", "L"]
    assert [c.attempt for c in serving.calls] == [1, 2, 3]


def test_cache_sample_is_deterministic(suite):
    a = [c.id for c in sample_cases(suite, 10, "s")]
    assert a == [c.id for c in sample_cases(suite, 10, "s")]
    assert a != [c.id for c in sample_cases(suite, 10, "other")]
    assert len(set(a)) == 10


def test_refusal_before_any_attempt_is_an_error_and_runs_use_their_own_task_ids(fleet_path,
                                                                                suite):
    policy = make_policy(1, guardrails={"max_attempts_per_task": 3, "max_tokens_per_task": 1})
    serving = FakeServingPath(policies={1: policy}, answer=competent)
    serving._spent["t"] = 5
    result = run_case(serving, suite.cases[0], policy, task_id="t")
    assert result.status == "error" and "attempt 1 refused: max_tokens_per_task" in result.reason
    _, gates, serving = gate(fleet_path, suite, policy, policy)
    # The token cap ends each task after one attempt, in every run alike: reproducible.
    assert gates["reproducibility"].phase is Phase.PASSED
    ids = {c.task_id for c in serving.calls}
    assert {t.split("-")[2] for t in ids} >= {"c1", "c2", "base", "probe"}


def test_a_candidate_never_sets_its_own_bar(fleet_path, suite):
    # The int4 candidate loses about 60 points of quality; it widens its own margin to
    # 0.5 so that it would pass by its own limits. The baseline's 0.05 judges it.
    base = make_policy(1)
    cand = make_policy(2, quantization={"M": "int4", "L": "int4"},
                       gates={"non_inferiority_margin": 0.5})
    _report, gates, _ = gate(fleet_path, suite, cand, base)
    ni = gates["quality_non_inferiority"]
    assert ni.phase is Phase.FAILED, ni.message
    assert ni.stats["margin"] == 0.05
