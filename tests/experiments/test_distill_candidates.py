"""Distillation candidates from the telemetry tables: share, stability, saving."""

import pandas as pd
import pytest
from experiments_testkit import FLEET

from experiments.distill_candidates import distill_candidates


def frames(spec):
    """spec: family -> list of tasks, each a list of (tier, passed) serve attempts."""
    tasks, attempts, calls = [], [], []
    for family, items in spec.items():
        for i, tries in enumerate(items):
            tid = f"{family}-{i}"
            green = any(ok for _, ok in tries)
            tasks.append({"task_id": tid, "family": family,
                          "outcome": "green" if green else "human_triage",
                          "verifier_passed": green, "review_accepted": pd.NA,
                          "verifier_cost_usd": 0.001 * len(tries)})
            for k, (tier, ok) in enumerate(tries, start=1):
                attempts.append({"task_id": tid, "attempt": k, "tier": tier,
                                 "variant": "bf16", "adapter": pd.NA, "passed": ok,
                                 "purpose": "serve"})
                calls.append({"task_id": tid, "attempt": k, "tier": tier, "variant": "bf16",
                              "adapter": pd.NA, "input_tokens": 1000, "output_tokens": 200,
                              "cached_input_tokens": 0, "cache": "miss", "cost_usd": float("nan")})
    t = pd.DataFrame(tasks).astype({"verifier_passed": "boolean", "review_accepted": "boolean"})
    a = pd.DataFrame(attempts).astype({"passed": "boolean"})
    c = pd.DataFrame(calls)
    return t, a, c


def test_top_heavy_stable_family_ranks_first_with_its_numbers():
    spec = {
        # every task fails on S and M and passes on L: all the value is on the top tier
        "list_ops": [[("S", False), ("M", False), ("L", True)]] * 40,
        # solved on S: nothing to gain
        "expr_eval": [[("S", True)]] * 40,
        # top-heavy but the verifier disagrees with itself on the same tier
        "var_trace": [[("L", False), ("L", True)]] * 40,
    }
    rows = distill_candidates(*frames(spec), FLEET, target_pass_rate=0.6)
    by = {r.family: r for r in rows}
    top = rows[0]
    assert top.family == "list_ops" and top.qualifies and top.target_tier == "S"
    assert top.upper_share == pytest.approx(1 - _s_share())
    assert top.top_share > 0.7 and top.green_prs == 40 and top.flaky_share == 0.0
    # saving = p * spend - n * (one S attempt + verifier per attempt)
    s = FLEET.economics("S", "bf16")
    c_s = 1000 * s.usd_per_input_token + 200 * s.usd_per_output_token
    assert top.target_attempt_usd == pytest.approx(c_s)
    assert top.saving_usd == pytest.approx(0.6 * top.spend_usd - 40 * (c_s + 0.001))
    assert top.cost_per_green_pr_after < top.cost_per_green_pr
    assert not by["expr_eval"].qualifies and "upper-tier share" in by["expr_eval"].reason
    assert not by["var_trace"].qualifies and "flaky" in by["var_trace"].reason
    assert by["var_trace"].flaky_share == 1.0


def _s_share():
    s, m, l_ = (FLEET.economics(t, "bf16") for t in "SML")
    cost = [1000 * e.usd_per_input_token + 200 * e.usd_per_output_token for e in (s, m, l_)]
    return cost[0] / sum(cost)


def test_exclusions_and_thin_families_do_not_qualify():
    spec = {"list_ops": [[("L", True)]] * 40, "bracket_fix": [[("L", True)]] * 5}
    rows = distill_candidates(*frames(spec), FLEET, exclude_families=frozenset({"list_ops"}))
    by = {r.family: r for r in rows}
    assert "excluded" in by["list_ops"].reason and not by["list_ops"].qualifies
    assert "5 tasks < 20" in by["bracket_fix"].reason
    with pytest.raises(ValueError):
        distill_candidates(*frames(spec), FLEET, target_pass_rate=0)
