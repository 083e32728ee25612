import numpy as np
import pytest

from controlplane.loop.verification import (
    VerifyOutcome,
    VerifySettings,
    ratio_estimate,
    verify_decision,
)


def window(n, cost, p_green, p_first, seed):
    rng = np.random.default_rng(seed)
    green = rng.random(n) < p_green
    first = green & (rng.random(n) < p_first / p_green)
    spend = rng.gamma(4.0, cost / 4.0, n)
    return spend, green, first


def decide(base, cand, look=1, **kw):
    return verify_decision(baseline_spend=base[0], baseline_green=base[1],
                           baseline_first_pass=base[2], candidate_spend=cand[0],
                           candidate_green=cand[1], candidate_first_pass=cand[2],
                           predicted_rel_delta=-0.2, look=look, settings=VerifySettings(**kw))


def test_ratio_estimate_matches_definition():
    est = ratio_estimate(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]))
    assert est.value == pytest.approx(3.0) and est.green == 2 and est.variance > 0


def test_no_green_prs_is_undefined():
    assert ratio_estimate(np.array([1.0, 2.0]), np.array([0, 0])).value is None


def test_realised_saving_is_verified():
    base = window(8000, 0.010, 0.8, 0.6, 1)
    cand = window(8000, 0.007, 0.8, 0.6, 2)
    d = decide(base, cand)
    assert d.outcome == VerifyOutcome.VERIFIED
    assert d.stats["rel_delta"] < -0.2 and "predicted -20.0%" in d.message


def test_significant_cost_regression_rolls_back():
    base = window(3000, 0.010, 0.8, 0.6, 1)
    cand = window(3000, 0.014, 0.8, 0.6, 2)
    d = decide(base, cand)
    assert d.outcome == VerifyOutcome.ROLL_BACK and "cost per Green PR" in d.message


def test_fpy_regression_rolls_back_when_an_owner_set_an_fpy_margin():
    base = window(3000, 0.010, 0.8, 0.7, 1)
    cand = window(3000, 0.010, 0.8, 0.5, 2)
    d = decide(base, cand, fpy_margin=0.03)
    assert d.outcome == VerifyOutcome.ROLL_BACK and "FPY" in d.message


def test_fpy_alone_is_reported_not_judged_by_default():
    # A cheap-first cascade: fewer first attempts pass, as many tasks end green, cheaper.
    base = window(8000, 0.010, 0.8, 0.7, 1)
    cand = window(8000, 0.006, 0.8, 0.4, 2)
    d = decide(base, cand)
    assert d.outcome == VerifyOutcome.VERIFIED, d.message
    assert d.stats["fpy_delta"] < -0.25


def test_a_green_pr_rate_regression_rolls_back_even_when_cheaper():
    base = window(4000, 0.010, 0.8, 0.6, 1)
    cand = window(4000, 0.006, 0.6, 0.5, 2)
    d = decide(base, cand)
    assert d.outcome == VerifyOutcome.ROLL_BACK and "Green PR rate" in d.message
    assert d.stats["green_rel_delta"] < -0.2


def test_small_windows_keep_watching_then_settle_at_max_looks():
    base = window(60, 0.010, 0.8, 0.6, 1)
    cand = window(60, 0.0102, 0.8, 0.6, 2)
    assert decide(base, cand, look=1).outcome == VerifyOutcome.KEEP_WATCHING
    last = decide(base, cand, look=7)
    assert last.outcome == VerifyOutcome.VERIFIED and "inconclusive" in last.message


def test_later_looks_spend_less_alpha():
    base = window(500, 0.010, 0.8, 0.6, 1)
    cand = window(500, 0.011, 0.8, 0.6, 2)
    assert decide(base, cand, look=3).stats["z"] > decide(base, cand, look=1).stats["z"]


def test_rollout_step_aborts_holds_advances_and_completes():
    from controlplane.loop.verification import VerifyDecision, VerifyOutcome, rollout_step

    def look(outcome, tasks, high=-0.2, message="msg"):
        return VerifyDecision(outcome, message, {"baseline_tasks": 1000, "candidate_tasks": tasks,
                                                 "rel_delta_ci": [high - 0.3, high]})

    steps = (0.1, 0.5, 1.0)

    def step(decision, share=0.1):
        return rollout_step(decision, share=share, steps=steps, min_tasks=150, margin=0.05)

    assert step(look(VerifyOutcome.ROLL_BACK, 400)).action == "abort"
    held = step(look(VerifyOutcome.KEEP_WATCHING, 100))
    assert (held.action, held.share) == ("hold", 0.1) and "100 tasks" in held.reason
    costly = step(look(VerifyOutcome.KEEP_WATCHING, 400, high=0.12))
    assert costly.action == "hold" and "+5%" in costly.reason
    # Undecided on Green PRs but not costlier and no regression: the canary analysis advances.
    advanced = step(look(VerifyOutcome.KEEP_WATCHING, 200))
    assert (advanced.action, advanced.share) == ("advance", 0.5)
    done = step(look(VerifyOutcome.VERIFIED, 600, message="non-inferior confirmed"), share=0.5)
    assert (done.action, done.share) == ("complete", 1.0)
    out_of_looks = step(look(VerifyOutcome.VERIFIED, 600, message="inconclusive after 7 looks"))
    assert out_of_looks.action == "abort" and "looks ran out" in out_of_looks.reason
