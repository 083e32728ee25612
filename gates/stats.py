"""The statistics behind the gate decisions: exact binomial bounds and percentiles.

Pure Python (no scipy), so ``import gates`` stays fast and the numbers are the same on
every machine. Everything here is a pure function of counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NonInferiority",
    "PairedCounts",
    "binomial_cdf",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "min_cases_for_margin",
    "non_inferiority",
    "paired_counts",
    "paired_difference_bounds",
    "percentile",
]


@dataclass(frozen=True)
class PairedCounts:
    """Outcomes of the same cases under two policies (candidate vs baseline)."""

    both: int  # both passed
    candidate_only: int  # candidate passed, baseline failed
    baseline_only: int  # baseline passed, candidate failed
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.baseline_only + self.neither

    @property
    def candidate_rate(self) -> float:
        return (self.both + self.candidate_only) / self.n if self.n else float("nan")

    @property
    def baseline_rate(self) -> float:
        return (self.both + self.baseline_only) / self.n if self.n else float("nan")

    @property
    def difference(self) -> float:
        """candidate pass rate minus baseline pass rate."""
        return (self.candidate_only - self.baseline_only) / self.n if self.n else float("nan")


def paired_counts(candidate: Sequence[bool], baseline: Sequence[bool]) -> PairedCounts:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired outcomes differ in length: {len(candidate)} vs {len(baseline)}")
    both = c_only = b_only = neither = 0
    for c, b in zip(candidate, baseline):
        if c and b:
            both += 1
        elif c:
            c_only += 1
        elif b:
            b_only += 1
        else:
            neither += 1
    return PairedCounts(both, c_only, b_only, neither)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for the n we use)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
        + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _bisect(f, lo: float, hi: float, iterations: int = 100) -> float:
    """Root of a function that is decreasing on [lo, hi] (f(lo) >= 0 >= f(hi))."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided exact upper bound on a proportion at level ``alpha`` (P(X<=k | p) = alpha)."""
    _check(k, n, alpha)
    if k >= n:
        return 1.0
    return _bisect(lambda p: binomial_cdf(k, n, p) - alpha, 0.0, 1.0)


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided exact lower bound on a proportion at level ``alpha`` (P(X>=k | p) = alpha)."""
    _check(k, n, alpha)
    if k <= 0:
        return 0.0
    return _bisect(lambda p: alpha - (1.0 - binomial_cdf(k - 1, n, p)), 0.0, 1.0)


def _check(k: int, n: int, alpha: float) -> None:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0 (got k={k}, n={n})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")


def paired_difference_bounds(counts: PairedCounts, alpha: float) -> tuple[float, float]:
    """Simultaneous one-sided bounds (lower, upper) on the paired difference of pass rates.

    The difference is p10 - p01 (p10: share of cases only the candidate passes, p01: only
    the baseline). Each discordant share gets an exact Clopper-Pearson bound at alpha/2
    (Bonferroni), so ``lower`` holds with confidence at least 1 - alpha, and so does
    ``upper``. Conservative but exact: no normal approximation, valid for any n.
    """
    n, a = counts.n, alpha / 2
    lower = (clopper_pearson_lower(counts.candidate_only, n, a)
             - clopper_pearson_upper(counts.baseline_only, n, a))
    upper = (clopper_pearson_upper(counts.candidate_only, n, a)
             - clopper_pearson_lower(counts.baseline_only, n, a))
    return lower, upper


@dataclass(frozen=True)
class NonInferiority:
    decision: str  # "non_inferior" | "inferior" | "undecided"
    lower: float
    upper: float


def non_inferiority(counts: PairedCounts, margin: float, alpha: float) -> NonInferiority:
    """Three zones: lower bound above -margin: non-inferior; upper bound below -margin:
    inferior; the interval straddles -margin: the suite is too small to decide."""
    lower, upper = paired_difference_bounds(counts, alpha)
    if lower > -margin:
        decision = "non_inferior"
    elif upper < -margin:
        decision = "inferior"
    else:
        decision = "undecided"
    return NonInferiority(decision, lower, upper)


def min_cases_for_margin(margin: float, alpha: float) -> int:
    """Fewest cases that can show non-inferiority at all (no case disagreeing):
    the smallest n with upper bound 1 - (alpha/2)^(1/n) below ``margin``."""
    if margin <= 0:
        raise ValueError("margin must be positive to be shown with finitely many cases")
    return math.floor(math.log(alpha / 2) / math.log1p(-margin)) + 1


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was measured, never interpolated."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100 (got {q})")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
