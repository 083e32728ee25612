import pytest

from contracts.prediction import Prediction


def test_record_round_trips_and_leaves_unset_figures_out():
    p = Prediction(lever="routing", risk="low", cost_per_green_pr_rel_delta=-0.2,
                   cost_per_green_pr_rel_delta_ci=(-0.3, -0.1), level=0.9)
    record = p.record()
    assert record == {"lever": "routing", "risk": "low", "level": 0.9,
                      "cost_per_green_pr_rel_delta": -0.2,
                      "cost_per_green_pr_rel_delta_ci": [-0.3, -0.1]}
    assert Prediction.model_validate(record) == p


def test_figures_put_each_interval_beside_its_point():
    p = Prediction(cost_per_green_pr_rel_delta=-0.2, cost_per_green_pr_rel_delta_ci=(-0.3, -0.1),
                   fpy=0.5)
    assert p.figures() == [("cost_per_green_pr_rel_delta", -0.2, (-0.3, -0.1)),
                           ("fpy", 0.5, None)]


def test_the_earlier_distillation_shape_reads_as_the_one_shape():
    p = Prediction.model_validate({"cost_per_green_pr_rel_delta": -0.1,
                                   "interval": [-0.2, 0.0], "risk": "high"})
    assert p.cost_per_green_pr_rel_delta_ci == (-0.2, 0.0)
    unknown = Prediction.model_validate({"interval": [None, None]})
    assert unknown.cost_per_green_pr_rel_delta_ci is None


@pytest.mark.parametrize("bad", [{"risk": "tiny"}, {"saving": 0.2}, {"support": 2.0}])
def test_a_bad_prediction_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Prediction.model_validate(bad)
