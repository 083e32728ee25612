"""The calibration record read back: per lever, how often the realised change fell inside
its predicted interval, and how much to widen that lever's next intervals.

Pure functions over ``store.CalibrationRecord`` rows (anything with the same attributes).
The verify step writes one row per look (``loop/verify_adapter.py``); the nightly turns the
record into one interval inflation factor per lever and hands it to the search, which
scales the half-widths of that lever's candidate intervals around their points
(``experiments.estimate(widen=...)``).

The factor rule (``inflation_factor``):

1. Evidence is one row per change: the latest look of each proposal (looks of one change
   are cumulative windows, not independent evidence), rows without a predicted interval
   left out, the ``horizon`` most recent changes of the lever kept.
2. Each change says what inflation its prediction needed: ``needed = |realised - predicted|
   / half-width`` on the side the realised point fell, less the realised figure's own noise
   (``store.records.realised_gap``: the errors add in quadrature, so a day's sampling noise
   the prediction could never foresee is not charged to it), measured on the estimator's own
   scale (the recorded half-width divided by the ``widen`` the prediction already carried),
   so a widened interval that covered does not hide that the estimator alone would have
   missed. ``needed <= 1`` is a hit, ``> 1`` a miss.
3. Recent changes count more: weight ``decay ** k`` for the k-th most recent (k = 0 newest).
4. Calibrated -> 1.0: when the weighted share of misses is at most ``1 - level`` (what a
   calibrated ``level`` interval misses), the intervals stand as the estimator makes them.
5. Otherwise the factor is the smallest inflation that would have covered at least
   ``level`` of the recent weighted changes (the weighted ``level``-quantile of
   ``needed``), between 1 and ``max_factor``. It grows with the share of misses (more of
   the weight lies on misses, so the quantile reaches them) and with their size, and falls
   back as hits return (their weight pushes the misses past the quantile, then under the
   ``1 - level`` share, and they leave the horizon).

A zero-width interval cannot be widened by scaling: a miss on one needs ``max_factor`` and
still shows as a miss; the record says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median
from typing import Any

from store.records import realised_gap

__all__ = [
    "DECAY",
    "HORIZON",
    "LEVEL",
    "MAX_FACTOR",
    "LeverCalibration",
    "calibration_summary",
    "factor_for",
    "inflation_factor",
    "inflation_factors",
    "latest_looks",
    "needed_inflation",
]

LEVEL = 0.9  # the intervals' nominal level (Prediction.level of the nightly's proposals)
HORIZON = 10  # most recent changes per lever that count
DECAY = 0.8  # weight of the k-th most recent change: DECAY ** k
MAX_FACTOR = 10.0


@dataclass(frozen=True)
class LeverCalibration:
    """One lever's record: changes judged, how many the predicted interval covered (as it
    was recorded, widening included), the decay-weighted miss share on the estimator's own
    scale, the median width of the recorded intervals and the factor the nightly applies."""

    lever: str
    looks: int
    changes: int
    inside: int
    misses: int
    coverage: float | None
    weighted_miss_share: float | None
    median_width: float | None
    worst_miss: float | None
    factor: float

    def as_dict(self) -> dict[str, Any]:
        return {"lever": self.lever, "looks": self.looks, "changes": self.changes,
                "inside": self.inside, "misses": self.misses, "coverage": self.coverage,
                "weighted_miss_share": self.weighted_miss_share,
                "median_width": self.median_width, "worst_miss": self.worst_miss,
                "factor": self.factor}


def _time(record: Any) -> tuple:
    return (record.recorded_at, getattr(record, "record_id", 0))


def latest_looks(records: Iterable[Any]) -> list[Any]:
    """The latest look of each proposal, oldest change first."""
    latest: dict[str, Any] = {}
    for r in records:
        kept = latest.get(r.proposal_id)
        if kept is None or (r.look, _time(r)) > (kept.look, _time(kept)):
            latest[r.proposal_id] = r
    return sorted(latest.values(), key=_time)


def needed_inflation(record: Any, *, max_factor: float = MAX_FACTOR) -> float | None:
    """The factor the estimator's own interval needed to cover the realised point (<= 1 is
    a hit); None when the prediction recorded no interval."""
    gap = realised_gap(record.predicted, record.predicted_low, record.predicted_high,
                       record.realised, getattr(record, "realised_low", None),
                       getattr(record, "realised_high", None))
    if gap is None:
        return None
    # on the estimator's own scale: the recorded interval already carried ``widen``
    widen = record.widen if record.widen and record.widen > 0 else 1.0
    return min(gap * widen, max_factor)


def _weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    order = sorted(range(len(values)), key=lambda i: values[i])
    total = float(sum(weights))
    running = 0.0
    for i in order:
        running += weights[i]
        if running >= q * total - 1e-12:
            return values[i]
    return values[order[-1]]


def _recent(records: Iterable[Any], horizon: int, max_factor: float
            ) -> list[tuple[Any, float]]:
    rows = []
    for r in latest_looks(records):
        need = needed_inflation(r, max_factor=max_factor)
        if need is not None:
            rows.append((r, need))
    return rows[-horizon:] if horizon > 0 else []


def _miss_share(needs: Sequence[float], weights: Sequence[float]) -> float:
    return sum(w for n, w in zip(needs, weights, strict=True) if n > 1.0) / sum(weights)


def inflation_factor(records: Iterable[Any], *, level: float = LEVEL, horizon: int = HORIZON,
                     decay: float = DECAY, max_factor: float = MAX_FACTOR) -> float:
    """One lever's interval inflation from its record (the rule in the module docstring)."""
    recent = _recent(records, horizon, max_factor)
    if not recent:
        return 1.0
    needs = [n for _, n in recent]
    weights = [decay ** k for k in range(len(needs) - 1, -1, -1)]  # newest last, weight 1
    if _miss_share(needs, weights) <= (1.0 - level) + 1e-12:
        return 1.0
    return float(min(max(_weighted_quantile(needs, weights, level), 1.0), max_factor))


def _by_lever(records: Iterable[Any], as_of: datetime | None) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in records:
        if as_of is not None and r.recorded_at >= as_of:
            continue
        out.setdefault(r.lever, []).append(r)
    return out


def inflation_factors(records: Iterable[Any], *, as_of: datetime | None = None,
                      **rule: Any) -> dict[str, float]:
    """Per lever named in the record, its factor (a lever absent from the record: 1.0).

    ``as_of``: only rows recorded before it (what the nightly knew when it proposed then).
    """
    return {lever: inflation_factor(rows, **rule)
            for lever, rows in sorted(_by_lever(records, as_of).items())}


def factor_for(factors: Mapping[str, float] | None, lever: str,
               names: Iterable[str] = ()) -> float:
    """The factor for a candidate of ``lever`` that changes the levers ``names``: the
    largest of theirs (a joint "all" candidate carries every lever's). The search applies
    the same rule."""
    if not factors:
        return 1.0
    keys = set(names) | {lever}
    if lever == "all":
        keys |= set(factors)
    return max([1.0, *(float(factors[k]) for k in keys if k in factors)])


def calibration_summary(records: Iterable[Any], **rule: Any) -> list[LeverCalibration]:
    """One row per lever in the record (the report's per-lever table)."""
    horizon = rule.get("horizon", HORIZON)
    max_factor = rule.get("max_factor", MAX_FACTOR)
    out = []
    for lever, rows in sorted(_by_lever(records, None).items()):
        changes = [r for r in latest_looks(rows) if r.inside is not None]
        inside = sum(1 for r in changes if r.inside)
        widths = [r.predicted_high - r.predicted_low for r in changes
                  if math.isfinite(r.predicted_high - r.predicted_low)]
        recent = _recent(rows, horizon, max_factor)
        share = None
        if recent:
            needs = [n for _, n in recent]
            share = _miss_share(needs, [rule.get("decay", DECAY) ** k
                                        for k in range(len(needs) - 1, -1, -1)])
        misses = [r.miss for r in changes if r.miss]
        out.append(LeverCalibration(
            lever=lever, looks=len(rows), changes=len(changes), inside=inside,
            misses=len(changes) - inside,
            coverage=inside / len(changes) if changes else None,
            weighted_miss_share=share,
            median_width=median(widths) if widths else None,
            worst_miss=max(misses) if misses else None,
            factor=inflation_factor(rows, **rule)))
    return out
