import math

import pytest

from gates import stats


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (0, 200), (17, 200), (199, 200)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    from scipy.stats import beta

    alpha = 0.025
    upper = 1.0 if k == n else beta.ppf(1 - alpha, k + 1, n - k)
    lower = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
    assert stats.clopper_pearson_upper(k, n, alpha) == pytest.approx(upper, abs=1e-9)
    assert stats.clopper_pearson_lower(k, n, alpha) == pytest.approx(lower, abs=1e-9)


def test_zero_discordant_pairs_bound_is_closed_form():
    counts = stats.PairedCounts(both=150, candidate_only=0, baseline_only=0, neither=60)
    lower, upper = stats.paired_difference_bounds(counts, 0.05)
    assert lower == pytest.approx(-(1 - 0.025 ** (1 / 210)), abs=1e-9)
    assert upper == pytest.approx(-lower)


def test_three_zones():
    same = stats.PairedCounts(100, 0, 0, 110)
    assert stats.non_inferiority(same, 0.02, 0.05).decision == "non_inferior"
    small = stats.PairedCounts(20, 0, 0, 10)
    assert stats.non_inferiority(small, 0.02, 0.05).decision == "undecided"
    worse = stats.PairedCounts(120, 3, 40, 47)
    assert stats.non_inferiority(worse, 0.02, 0.05).decision == "inferior"


def test_min_cases_for_margin_is_the_threshold():
    n = stats.min_cases_for_margin(0.02, 0.05)
    assert stats.non_inferiority(stats.PairedCounts(n, 0, 0, 0), 0.02, 0.05).decision \
        == "non_inferior"
    assert stats.non_inferiority(stats.PairedCounts(n - 1, 0, 0, 0), 0.02, 0.05).decision \
        == "undecided"


def test_paired_counts_and_rates():
    c = stats.paired_counts([True, True, False, False], [True, False, True, False])
    assert (c.both, c.candidate_only, c.baseline_only, c.neither) == (1, 1, 1, 1)
    assert c.difference == 0 and c.candidate_rate == 0.5
    with pytest.raises(ValueError, match="length"):
        stats.paired_counts([True], [])


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert stats.percentile(values, 95) == 95
    assert stats.percentile([5.0], 95) == 5.0
    assert stats.percentile([1, 2, 3, 4], 50) == 2
    with pytest.raises(ValueError):
        stats.percentile([], 95)


def test_binomial_cdf_edges():
    assert stats.binomial_cdf(-1, 5, 0.5) == 0
    assert stats.binomial_cdf(5, 5, 0.5) == 1
    assert stats.binomial_cdf(2, 4, 0.5) == pytest.approx(11 / 16)
    assert math.isclose(stats.binomial_cdf(0, 10, 0.1), 0.9 ** 10)
