"""The search-space vocabulary every lever module uses, and what a lever sees of a window."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LeverContext", "Param"]


@dataclass(frozen=True)
class Param:
    """One searched value: ``choice`` among ``values``, or ``uniform``/``int`` in [lo, hi]."""

    kind: str
    values: tuple[Any, ...] = ()
    lo: float = 0.0
    hi: float = 1.0

    @staticmethod
    def choice(*values: Any) -> Param:
        return Param("choice", tuple(values))

    @staticmethod
    def uniform(lo: float, hi: float) -> Param:
        return Param("uniform", lo=lo, hi=hi)

    @staticmethod
    def integer(lo: int, hi: int) -> Param:
        return Param("int", lo=lo, hi=hi)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        if self.kind == "int":
            return rng.randint(int(self.lo), int(self.hi))
        return rng.uniform(self.lo, self.hi)

    def nudge(self, value: Any, rng: random.Random, scale: float = 0.15) -> Any:
        """A nearby value (local search around a point the search algorithm proposed)."""
        if self.kind == "uniform":
            width = (self.hi - self.lo) * scale
            return min(self.hi, max(self.lo, float(value) + rng.gauss(0.0, width)))
        if self.kind == "int":
            return min(int(self.hi), max(int(self.lo), int(value) + rng.choice((-1, 1))))
        return self.sample(rng)

    def tune_domain(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "int":
            return tune.randint(int(self.lo), int(self.hi) + 1)
        return tune.uniform(self.lo, self.hi)

    def suggest(self, trial, name: str) -> Any:
        """The same domain through an Optuna trial (the in-process executor)."""
        if self.kind == "choice":
            labels = [repr(v) for v in self.values]
            picked = trial.suggest_categorical(name, labels)
            return self.values[labels.index(picked)]
        if self.kind == "int":
            return trial.suggest_int(name, int(self.lo), int(self.hi))
        return trial.suggest_float(name, self.lo, self.hi)


@dataclass(frozen=True)
class LeverContext:
    """What a lever may know of the fleet and the window when it builds its space.

    ``feature_sample`` maps each numeric task feature to a sample of its values (aligned
    rows, so a weighted score can be computed per sampled task); ``task_usd`` and
    ``task_tokens`` are samples of the per-task spend and tokens of the window.
    ``family_usd`` is each family's spend in the window (all its logged attempts, priced
    as the estimator prices them); ``family_saving`` is what the estimate says a routing
    of the family's own could save on it (US$ at its current Green PRs, point estimate,
    Green PRs non-inferior). The routing lever spends its per-family parameters on the
    families these rank first (``policies.levers.routing.override_families``); both are
    empty when unknown (then families are taken in name order).
    """

    fleet: Any
    families: tuple[str, ...]
    feature_sample: dict[str, tuple[float, ...]] = field(default_factory=dict)
    task_usd: tuple[float, ...] = ()
    task_tokens: tuple[float, ...] = ()
    family_usd: dict[str, float] = field(default_factory=dict)
    family_saving: dict[str, float] = field(default_factory=dict)

    def quantile(self, values: tuple[float, ...], q: float) -> float:
        if not values:
            return 0.0
        ordered = sorted(values)
        pos = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return float(ordered[pos])
