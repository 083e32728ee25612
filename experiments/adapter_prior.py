"""Seed the outcome model with a new adapter's held-out evaluation.

A freshly distilled adapter has served nothing, so the window holds no attempt on its
(tier, variant, adapter) combination and the estimator could only bound it (always fail,
always pass). ``seed_adapter_outcomes`` adds the adapter's held-out verdicts (the job's
own evaluation: real model, real verifier, prompts of the family that were never trained
on) as first-attempt rows of that combination, attached to the family's tasks of the same
difficulty where the window records one. The outcome model then learns the adapter's
pass rate from them.

They are not the logging distribution, so by default they do not count as observed
support: the estimator still widens the interval with the always-fail/always-pass bounds
and the window's notes carry the assumption. ``count_as_support=True`` treats them as
observed (narrow intervals; use only when the held-out mix matches the live one). Once
live calls of the adapter are in the window, this seeding is skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from experiments.window import Window

__all__ = ["PRIOR_PURPOSE", "seed_adapter_outcomes"]

PRIOR_PURPOSE = "prior"


def seed_adapter_outcomes(window: Window, *, family: str, tier: str, variant: str | None,
                          adapter: str, verdicts: Sequence[bool],
                          difficulties: Sequence[int] | None = None,
                          count_as_support: bool = False) -> Window:
    """A new window whose attempt rows include the adapter's held-out verdicts."""
    combo = window.combo_index(tier, variant, adapter)
    if combo < 0:
        raise ValueError(f"the window's fleet has no {tier}/{variant}+{adapter}: build the "
                         "window with the manifest that registers the adapter")
    if window.combo_attempts[combo] > 0:
        return window  # live evidence exists: the outcome model learns from it
    if family not in window.families or not len(verdicts):
        return window
    rows = np.flatnonzero(window.family_code == window.families.index(family))
    if len(rows) == 0:
        return window
    col = window.feature_names.index("difficulty") if "difficulty" in window.feature_names \
        else None
    pools: dict[int | None, list[int]] = {None: rows.tolist()}
    if col is not None and difficulties is not None:
        for r in rows:
            pools.setdefault(int(window.route_features[r, col]), []).append(int(r))
    cursor: dict[int | None, int] = {}
    picked = []
    for k in range(len(verdicts)):
        d = int(difficulties[k]) if difficulties is not None else None
        key = d if d in pools else None
        pool = pools[key]
        picked.append(pool[cursor.get(key, 0) % len(pool)])
        cursor[key] = cursor.get(key, 0) + 1
    picked_arr = np.asarray(picked, dtype=np.int64)
    extra = {
        "task": picked_arr,
        "task_id": window.task_ids[picked_arr],
        "attempt": np.ones(len(picked_arr), dtype=np.int64),
        "combo": np.full(len(picked_arr), combo, dtype=np.int64),
        "passed": np.asarray(verdicts, dtype=bool),
        "purpose": np.full(len(picked_arr), PRIOR_PURPOSE, dtype=object),
        "propensity": np.full(len(picked_arr), np.nan),
    }
    for c in window.attempts_frame.columns:
        if c.startswith("hist_"):
            extra[c] = np.zeros(len(picked_arr))
    frame = pd.concat([window.attempts_frame, pd.DataFrame(extra)], ignore_index=True)
    combo_attempts = window.combo_attempts.copy()
    state_attempts = dict(window.state_attempts)
    if count_as_support:
        combo_attempts[combo] += len(picked_arr)
        state = (combo, tuple(0 for _ in window.tiers))
        state_attempts[state] = state_attempts.get(state, 0) + len(picked_arr)
    rate = float(np.mean(verdicts))
    label = f"{tier}/{variant or window.default_variant.get(tier)}+{adapter}"
    note = (f"assumption: {label} never served in this window; its P(pass) on {family} is "
            f"seeded from {len(verdicts)} held-out evaluations (pass rate {rate:.2f})"
            + ("" if count_as_support else
               ", not counted as observed support (interval includes the bounds)"))
    return dataclasses.replace(window, attempts_frame=frame, combo_attempts=combo_attempts,
                               state_attempts=state_attempts, notes=[*window.notes, note])
