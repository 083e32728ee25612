"""One small search through the real Ray Tune with OptunaSearch (local Ray, 2 CPUs)."""

from __future__ import annotations

import pytest


@pytest.mark.integration
def test_ray_tune_search_runs_and_shuts_down(logged, models, fleet, logging_policy):
    import ray

    from experiments.search import search_candidates

    _, window = logged
    result = search_candidates(window, fleet, logging_policy, levers=("routing",),
                               candidates=3, trials=2, per_trial=8, executor="tune",
                               models=models, bootstrap=40, progress=False)
    assert result.evaluated >= 8 and result.executor == "tune"
    assert 1 <= len(result) <= 3
    assert not ray.is_initialized()
