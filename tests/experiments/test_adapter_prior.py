"""A new adapter's held-out verdicts seed the outcome model, marked as an assumption."""

import numpy as np
import pytest

from experiments.adapter_prior import PRIOR_PURPOSE, seed_adapter_outcomes
from experiments.estimator import estimate
from experiments.outcomes import fit_outcome_models


@pytest.fixture(scope="module")
def candidate(logging_policy):
    return logging_policy.evolve(author="t", distillation={
        "list_ops": {"tier": "S", "adapter": "list-ops-v1"}})


def test_verdicts_become_prior_rows_not_support(logged, fleet, logging_policy, candidate):
    window = logged[1]
    combo = window.combo_index("S", "bf16", "list-ops-v1")
    assert window.combo_attempts[combo] == 0  # never served
    verdicts = [True] * 90 + [False] * 10
    seeded = seed_adapter_outcomes(window, family="list_ops", tier="S", variant="bf16",
                                   adapter="list-ops-v1", verdicts=verdicts,
                                   difficulties=[1 + k % 3 for k in range(100)])
    prior = seeded.attempts_frame[seeded.attempts_frame["purpose"] == PRIOR_PURPOSE]
    assert len(prior) == 100 and (prior["combo"] == combo).all()
    fam = window.families.index("list_ops")
    assert (window.family_code[prior["task"].to_numpy()] == fam).all()
    assert seeded.combo_attempts[combo] == 0 and window.attempts_frame is not seeded.attempts_frame
    assert any(n.startswith("assumption:") and "list-ops-v1" in n for n in seeded.notes)

    models = fit_outcome_models(seeded, seed=0)
    est = estimate(candidate, seeded, fleet, models, bootstrap=50)
    base = estimate(logging_policy, seeded, fleet, models, bootstrap=50)
    assert est.support < 1.0  # still unobserved: the interval includes both bounds
    assert est.cost_per_green_pr.low <= est.cost_per_green_pr.point <= est.cost_per_green_pr.high
    assert any("assumption" in n for n in est.notes)
    # A 90% adapter on S moves list_ops off the upper tiers: cheaper per Green PR.
    assert est.cost_per_green_pr.point < base.cost_per_green_pr.point

    supported = seed_adapter_outcomes(window, family="list_ops", tier="S", variant="bf16",
                                      adapter="list-ops-v1", verdicts=verdicts,
                                      count_as_support=True)
    assert supported.combo_attempts[combo] == 100
    # Seeding is skipped once live calls exist.
    assert seed_adapter_outcomes(supported, family="list_ops", tier="S", variant="bf16",
                                 adapter="list-ops-v1", verdicts=verdicts) is supported


def test_unknown_adapter_is_refused(logged):
    with pytest.raises(ValueError, match="no S/bf16\\+nope"):
        seed_adapter_outcomes(logged[1], family="list_ops", tier="S", variant="bf16",
                              adapter="nope", verdicts=[True])
    assert np.isfinite(logged[1].combo_attempts).all()
