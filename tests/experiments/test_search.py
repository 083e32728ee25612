"""The search ranks candidates with intervals and judges feasibility on their lower bounds."""

from __future__ import annotations

import pytest

from experiments.search import objective, search_candidates


def test_inline_search_returns_ranked_evidenced_candidates(logged, models, fleet,
                                                            logging_policy):
    _, window = logged
    result = search_candidates(window, fleet, logging_policy,
                               levers=("routing", "guardrails"), candidates=6, trials=4,
                               per_trial=12, executor="inline", models=models,
                               bootstrap=60, progress=False)
    assert result.evaluated >= 60 and 0 < len(result) <= 6
    margin = logging_policy.spec.gates.non_inferiority_margin
    for cand in result:
        assert cand.policy.metadata.parent_version == logging_policy.metadata.version
        assert cand.lever in ("routing", "guardrails")
        assert cand.estimate.cost_per_green_pr.low <= cand.estimate.cost_per_green_pr.point
        # FPY is reported, and constrains only with gates.fpy_margin (unset here).
        assert logging_policy.spec.gates.fpy_margin is None
        assert cand.feasible == (cand.deltas.green_prs.low >= -margin)
        assert cand.risk in ("low", "medium", "high")
        if not cand.feasible:
            assert cand.risk == "high" and cand.reasons
    # Ranked by the pessimistic end: the high end of the change of cost per Green PR.
    feasible = [c.deltas.cost_per_green_pr.high for c in result if c.feasible]
    assert feasible == sorted(feasible)
    flags = [c.feasible for c in result]
    assert flags == sorted(flags, reverse=True)  # feasible candidates rank first


def test_objective_penalises_violations_and_low_support():
    active = {"green_prs": 100.0, "fpy": 0.5, "cost_per_green_pr": 1.0, "support": 1.0}
    good = {"green_prs": 99.0, "fpy": 0.49, "cost_per_green_pr": 0.8, "support": 1.0}
    worse_green = {**good, "green_prs": 90.0}
    unsupported = {**good, "support": 0.5}
    assert objective(good, active, 0.02) == pytest.approx(0.8)
    assert objective(worse_green, active, 0.02) > 10 * objective(good, active, 0.02)
    assert objective(unsupported, active, 0.02) > 10 * objective(good, active, 0.02)


def test_unknown_lever_and_executor_are_refused(logged, models, fleet, logging_policy):
    _, window = logged
    with pytest.raises(ValueError, match="unknown lever"):
        search_candidates(window, fleet, logging_policy, levers=("speed",), models=models,
                          progress=False)
    with pytest.raises(ValueError, match="executor"):
        search_candidates(window, fleet, logging_policy, levers=("routing",), models=models,
                          progress=False, executor="threads", trials=1, per_trial=2)
