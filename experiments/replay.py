"""The counterfactual replay: what a window would have cost and produced under a policy.

For every task the policy is applied exactly as the gateway applies it, through
``policies.routing`` (``resolve_routing``, ``tier_plan``, ``first_tier_probabilities``,
``shadow_tier``); only the linear difficulty score is evaluated for all tasks at once, and
each replay checks a sample of tasks against ``routing.start_index`` so the two can never
drift apart silently.

Per task and per possible start tier, the attempts of the plan are walked with the
outcome model's P(pass) (direct method): reach probability, expected spend (each attempt
priced by the cost model for its tier, variant and cache setting, plus verifier compute),
P(Green), P(first attempt passes). Guardrail caps apply the gateway's own rule
(``policies.caps``, checked before every call) to each task's realised spend, drawn around
its mean with the spread the window measured (``_cap_odds``): an attempt runs while the
spend before it is below the caps, is cut between its calls or clipped at a token cap when
the cap is reached inside it, and the task then ends ``budget_exceeded``. The start
distribution (routing plus exploration) mixes the plans; the shadow rate adds evaluation
spend.

Off-policy correction (doubly robust): where the policy's plan from the logged start tier
reproduces the logged trajectory up to where it ended, the observed outcome corrects the
model, weighted by P_policy(start) / logged propensity. A shadow beside the first attempt is
a second route to the plan's first attempt: a task's verdict on Y is shown whatever its
start (``_family_routes``); the two routes' corrections are mixed by how many tasks each
matched (``_correct``), and the steps after a shadow are the model's. Combinations the
window never observed are reported through ``unsupported`` mass, which the estimator turns
into wider intervals (``estimator.estimate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.outcomes import OutcomeModels
from experiments.window import Window

__all__ = ["MODEL_REFITS", "ReplayContext", "RoutingMismatch", "TaskValues",
           "attach_model_refits", "evidence_influence", "model_deviations",
           "price_influence", "replay_policy"]

# Tasks checked per family and replay against policies.routing.start_index.
ROUTING_CHECK_SAMPLE = 8


class RoutingMismatch(RuntimeError):
    """The vectorised start tier disagreed with policies.routing: a bug, never data."""


@dataclass
class TaskValues:
    """Per-task expected values under one policy (arrays of length n)."""

    green: np.ndarray
    cost: np.ndarray  # all spend: serve + rework + verifier + eval
    fpy: np.ndarray
    attempts: np.ndarray
    serve: np.ndarray  # first attempts
    rework: np.ndarray  # later attempts
    verifier: np.ndarray
    eval: np.ndarray  # shadow runs and exploration's extra spend
    budget_exceeded: np.ndarray
    unsupported: np.ndarray  # expected attempts on combinations the window never observed
    dr_weight: np.ndarray  # the off-policy weight each task's observation received
    # (combo, failures per tier) states the policy's plans step through
    states: frozenset = frozenset()

    def columns(self) -> np.ndarray:
        return np.stack([self.green, self.cost, self.fpy, self.serve, self.rework,
                         self.verifier, self.eval, self.attempts, self.budget_exceeded,
                         self.unsupported], axis=1)

    COLUMN_NAMES = ("green", "cost", "fpy", "serve", "rework", "verifier", "eval",
                    "attempts", "budget_exceeded", "unsupported")


class ReplayContext:
    """What replays of one window share: fold logits, supported combos, family rows, and
    the per-state corrections of the outcome model (``state_shift``).

    ``evidence_prior``: how many observations the outcome model counts for against a
    state's own evidence (shrinkage: a state seen on few tasks stays near the model);
    ``math.inf``: the outcome model alone, no state corrections.
    """

    def __init__(self, window: Window, models: OutcomeModels, *, min_support: int = 20,
                 evidence_prior: float = 20.0):
        self.window = window
        self.models = models
        self.logits = models.task_combo_logits(window.model_features)  # [K, n, C]
        self.supported = window.combo_attempts >= min_support
        self.min_support = min_support
        self.evidence_prior = evidence_prior
        self._evidence = _state_evidence(window)
        self._shifts: dict[tuple[int, tuple[int, ...]], float] = {}
        # retry_gain's evidence: the paired rows and each one's influence on it
        self.retry_gain, self._gain_rows, self._gain_influence = _retry_gain(
            models, self.logits, self._evidence, min_support)
        self.family_rows = [np.flatnonzero(window.family_code == f)
                            for f in range(len(window.families))]
        self.feature_col = {name: j for j, name in enumerate(window.feature_names)}
        self.rank_pos = {r: i for i, r in enumerate(sorted({c.rank for c in window.combos}))}
        self.tier_pos = {c.tier: self.rank_pos[c.rank] for c in window.combos}
        self.tokens = window.input_tokens + window.output_tokens
        self._prob_cache: dict[tuple, np.ndarray] = {}
        # (family, plan position) -> spend draws for the cap odds (``_spend_draws``)
        self.cap_draws: dict[tuple[int, int], np.ndarray] = {}
        # The same window under outcome models fitted on halves of its tasks
        # (``attach_model_refits``): how much the fit itself moves a replay.
        self.refits: list[ReplayContext] = []

    def is_supported(self, combo: int, hist: tuple[float, ...]) -> bool:
        """Observed often enough: the combination, and it after these failures."""
        state = (combo, tuple(int(h) for h in hist))
        return bool(self.supported[combo]) and (
            self.window.state_attempts.get(state, 0) >= self.min_support)

    def state_shift(self, combo: int, hist: tuple[float, ...]) -> float:
        """The outcome model's score correction for one (combination, failures) state.

        The tasks observed in the state (attempt rows and joint-outcome evidence: on a task
        served on L with a shadow on S that failed, L's verdict is the step S -> L) pass
        at some rate; the shift moves every fold's score by one constant so that the model's
        mean P(pass) over those tasks matches that rate, shrunk toward the model's own mean
        by ``evidence_prior`` pseudo-observations. It is what conditions a cascade step on
        the failures before it beyond the history terms the model shares across tiers: a
        task that failed on S is harder for L than its features say. No evidence: 0.

        A joint row's verdict is scored ``retry_gain`` higher than it showed: it never saw
        the failure it is read after, where the cascade's step does (``_retry_gain``).
        """
        key = (combo, tuple(int(h) for h in hist))
        shift = self._shifts.get(key)
        if shift is None:
            shift = 0.0
            evidence = self._evidence.get(key)
            if (evidence is not None and self.models.constant is None
                    and np.isfinite(self.evidence_prior)):
                tasks, passed, joint = evidence
                z = self._evidence_scores(key, tasks, joint)
                shift = _matching_shift(self.models, z, float(passed.sum()), len(passed),
                                        self.evidence_prior)
            self._shifts[key] = shift
        return shift

    def _evidence_scores(self, state: tuple[int, tuple[int, ...]], tasks: np.ndarray,
                         joint: np.ndarray) -> np.ndarray:
        """[K, m] fold scores of a state's evidence rows before its shift, a joint row's
        moved down by ``retry_gain`` (it showed a first try's verdict, not a retry's)."""
        return (_state_scores(self.models, self.logits, state, tasks)
                - self.retry_gain * joint[None, :])

    def pass_prob(self, family: int, combo: int, hist: tuple[float, ...], attempt: int,
                  envelope: str | None) -> np.ndarray:
        """P(pass) of every task of ``family`` on ``combo`` after failures ``hist``."""
        if envelope is not None and not self.is_supported(combo, hist):
            return np.full(len(self.family_rows[family]), 0.0 if envelope == "low" else 1.0)
        key = (family, combo, hist, attempt)
        cached = self._prob_cache.get(key)
        if cached is None:
            rows = self.family_rows[family]
            shift = (self.models.history_shift(np.asarray(hist), attempt)
                     + self.state_shift(combo, hist))
            z = self.logits[:, rows, combo] + shift[:, None]
            cached = self.models.calibrate(z)
            if len(self._prob_cache) > 4096:
                self._prob_cache.clear()
            self._prob_cache[key] = cached
        return cached


def _state_evidence(window: Window) -> dict[tuple[int, tuple[int, ...]],
                                            tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(combo, failures per tier) -> (task indices, verdicts, is a joint row) of its
    observations: the outcome model's training rows (``experiments.outcomes.training_rows``)."""
    from experiments.outcomes import training_rows
    from experiments.window import JOINT_PURPOSE

    frame = training_rows(window)
    if frame.empty:
        return {}
    hist_cols = [f"hist_{i}" for i in range(len(window.tiers))]
    keys = frame[["combo", *hist_cols]].to_numpy(dtype=np.int64)
    tasks = frame["task"].to_numpy(dtype=np.int64)
    passed = frame["passed"].to_numpy(dtype=bool)
    joint = (frame["purpose"] == JOINT_PURPOSE).to_numpy(dtype=bool)
    states, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(states) + 1))
    out = {}
    for i, state in enumerate(states):
        members = order[bounds[i]:bounds[i + 1]]
        out[(int(state[0]), tuple(int(x) for x in state[1:]))] = (
            tasks[members], passed[members], joint[members])
    return out


def _state_scores(models: OutcomeModels, logits: np.ndarray,
                  state: tuple[int, tuple[int, ...]], tasks: np.ndarray) -> np.ndarray:
    """[K, m] fold scores of ``tasks`` on a state's combination after its failures (the
    attempt a plan reaching the state makes: 1 + their number)."""
    combo, hist = state
    return (logits[:, tasks, combo]
            + models.history_shift(np.asarray(hist, dtype=float), 1 + sum(hist))[:, None])


def _rate_influence(models: OutcomeModels, z: np.ndarray, passed: np.ndarray
                    ) -> np.ndarray | None:
    """Each row's first-order influence on the shift that matches the calibrated P(pass) at
    scores ``z`` [K, m] to ``passed``: its residual over the slope's sum (None: no slope)."""
    p = models.calibrate(z)
    slope = (models.calibrate(z + 1e-4) - models.calibrate(z - 1e-4)) / 2e-4
    if not slope.sum() > 0:
        return None
    return (passed - p) / slope.sum()


def _retry_gain(models: OutcomeModels, logits: np.ndarray, evidence: dict, min_rows: int
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """What a cascade's step gains from seeing the failure before it, on the score scale.

    A joint row (a shadow's verdict read after the other tier's failure, or a serve verdict
    read after a failed shadow) is a try that never saw that failure; a real retry in the
    same (combination, failures) state did. Where a state holds both on the same tasks (a
    task that failed on S, with a shadow on M beside that attempt, then escalated to M), at
    least ``min_rows`` of them, the difference is measured on those tasks: the shift that
    matches the model to their retries minus the one that matches it to their joint rows.
    Tasks seen one way only are left out (a serve verdict after a failed shadow comes from
    tasks that started elsewhere, routed by their features).
    The states' differences are pooled, each weighed by n_retry x n_joint / (n_retry +
    n_joint); a side that all passed or all failed has no finite shift and is skipped.
    0 where no state holds both: the joint rows are then read as retries (a
    harness that resends the same prompt gains nothing from the failure; a repair loop
    that shows it does).

    Returns the gain, the task of each paired row, and each row's influence on the gain
    (its residual over the slope of the side it matched, signed and weighed as the pool
    weighs its state) for ``evidence_influence``."""
    empty = (0.0, np.zeros(0, dtype=np.int64), np.zeros(0))
    if models.constant is not None:
        return empty
    total = weight_sum = 0.0
    pieces: list[tuple[float, np.ndarray, np.ndarray]] = []
    for state, (tasks, passed, joint) in evidence.items():
        if sum(state[1]) == 0:
            continue
        # Only the tasks seen both ways: the same tasks, so only the verdicts differ.
        both = np.isin(tasks, tasks[joint]) & np.isin(tasks, tasks[~joint])
        is_joint, is_retry = both & joint, both & ~joint
        n_joint, n_retry = int(is_joint.sum()), int(is_retry.sum())
        if min(n_joint, n_retry) < max(min_rows, 1):
            continue
        p_joint, p_retry = float(passed[is_joint].mean()), float(passed[is_retry].mean())
        if not (0.0 < p_joint < 1.0 and 0.0 < p_retry < 1.0):
            continue  # an all-pass or all-fail side has no finite shift
        z = _state_scores(models, logits, state, tasks)
        w = n_retry * n_joint / (n_retry + n_joint)
        for side, sign in ((is_retry, 1.0), (is_joint, -1.0)):
            zs = z[:, side]
            shift = _matching_shift(models, zs, float(passed[side].sum()), int(side.sum()), 0.0)
            total += sign * w * shift
            each = _rate_influence(models, zs + shift, passed[side])
            if each is not None:
                pieces.append((w, tasks[side], sign * each))
        weight_sum += w
    if weight_sum == 0:
        return empty
    rows = np.concatenate([t for _, t, _ in pieces]) if pieces else empty[1]
    influence = (np.concatenate([w / weight_sum * e for w, _, e in pieces]) if pieces
                 else empty[2])
    return total / weight_sum, rows, influence


def _matching_shift(models: OutcomeModels, z: np.ndarray, passes: float, n: int,
                    prior: float) -> float:
    """The constant added to the fold scores ``z`` [K, n] that makes the mean calibrated
    P(pass) equal (passes + prior * model mean) / (n + prior) (bisection; 0 if none)."""
    model_mean = float(models.calibrate(z).mean())
    target = (passes + prior * model_mean) / (n + prior)
    lo, hi = -30.0, 30.0
    f_lo = float(models.calibrate(z + lo).mean()) - target
    f_hi = float(models.calibrate(z + hi).mean()) - target
    if f_lo * f_hi > 0:
        return 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        f_mid = float(models.calibrate(z + mid).mean()) - target
        if (f_mid < 0) == (f_lo < 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return 0.5 * (lo + hi)


def evidence_influence(policy, ctx: ReplayContext, values: TaskValues, *,
                       doubly_robust: bool = True, step: float = 0.05) -> np.ndarray:
    """[n, len(TaskValues.COLUMN_NAMES)] per-task terms that carry the sampling error of the
    state corrections (``ReplayContext.state_shift``) into a bootstrap over tasks.

    Each state the policy steps through was corrected on the tasks observed in it; another
    sample of those tasks would have given another correction. Per state: the sensitivity
    of the policy's totals to its shift (one more replay, the shift moved by ``step``) times
    each evidence task's influence on the state's rate (its residual over the model's slope
    at the shift, not shrunk: the model was fitted on the same rows), added to that task's
    row. Every column sums to 0, so point estimates do not move; a resample of the tasks
    (the estimator's Poisson weights) moves each state's correction as refitting it on the
    resample would, to first order, on the same resamples for every policy (paired).
    """
    n_cols = len(TaskValues.COLUMN_NAMES)
    influence = np.zeros((ctx.window.n, n_cols))
    if ctx.models.constant is not None or not np.isfinite(ctx.evidence_prior):
        return influence
    base = values.columns().sum(axis=0)
    for state in sorted(values.states):
        evidence = ctx._evidence.get(state)
        if evidence is None:
            continue
        tasks, passed, joint = evidence
        combo, hist = state
        shift = ctx.state_shift(combo, hist)
        # Unshrunk: the model the shift shrinks toward was fitted on these same rows, so
        # another sample moves the state's rate with it, not only its shift.
        each = _rate_influence(ctx.models, ctx._evidence_scores(state, tasks, joint) + shift,
                               passed)
        if each is None:
            continue
        each = each - each.mean()
        ctx._shifts[state] = shift + step
        ctx._prob_cache.clear()
        try:
            moved = replay_policy(policy, ctx, doubly_robust=doubly_robust)
        finally:
            ctx._shifts[state] = shift
            ctx._prob_cache.clear()
        sensitivity = (moved.columns().sum(axis=0) - base) / step
        np.add.at(influence, tasks, each[:, None] * sensitivity[None, :])
    if len(ctx._gain_rows):
        # The retry gain is measured on the paired tasks too: the same first-order term.
        gain, shifts = ctx.retry_gain, dict(ctx._shifts)
        ctx.retry_gain = gain + step
        ctx._shifts.clear()
        ctx._prob_cache.clear()
        try:
            moved = replay_policy(policy, ctx, doubly_robust=doubly_robust)
        finally:
            ctx.retry_gain = gain
            ctx._shifts.clear()
            ctx._shifts.update(shifts)
            ctx._prob_cache.clear()
        sensitivity = (moved.columns().sum(axis=0) - base) / step
        each = ctx._gain_influence - ctx._gain_influence.mean()
        np.add.at(influence, ctx._gain_rows, each[:, None] * sensitivity[None, :])
    return influence


# Half-sample refits of the outcome model an estimate's interval carries by default. Each
# costs one more replay per interval estimate; 8 covered no better than 4 (BENCHMARKS.md).
MODEL_REFITS = 4


def attach_model_refits(ctx: ReplayContext, k: int = MODEL_REFITS, seed: int = 0
                        ) -> ReplayContext:
    """Give ``ctx`` ``k`` contexts on its window whose outcome models were fitted on halves of
    its tasks (complementary pairs of random halves), for ``model_deviations``.

    The bootstrap resamples tasks under one fitted model. Where a policy leans on the model
    (the steps of a cascade after a try the window seldom shows, such as a served adapter's
    failures) the fit's own sampling error is missing from it: explored distillation's
    predictions varied 1.23x the spread their intervals implied across windows, and refits
    on halves moved the same prediction by 0.0068 (s.d.) against the 0.0085 missing. Fits
    on halves spread about as far as the full fit's own sampling error (the delete-half
    jackknife), so their spread is added as it is."""
    from experiments.outcomes import fit_outcome_models

    w = ctx.window
    ctx.refits = []
    if k <= 0 or w.n < 4:
        return ctx
    rng = np.random.default_rng(seed)
    for i in range(0, k, 2):
        order = rng.permutation(w.n)
        for half in (order[: w.n // 2], order[w.n // 2:])[: k - i]:
            models = fit_outcome_models(w.subset(np.sort(half)), seed=seed)
            ctx.refits.append(ReplayContext(w, models, min_support=ctx.min_support,
                                            evidence_prior=ctx.evidence_prior))
    return ctx


def model_deviations(policy, ctx: ReplayContext, *, doubly_robust: bool = True
                     ) -> np.ndarray:
    """[len(ctx.refits), len(TaskValues.COLUMN_NAMES)]: each refit's column totals about the
    refits' mean (a half-sample fit is more shrunk than the full one: that offset is no
    sampling error), scaled by sqrt(k / (k - 1)) for the degree of freedom the mean takes,
    for the estimator to add to its resamples in turn, the same refit to the same resample
    for every policy (paired deltas). Empty with fewer than two refits."""
    k = len(ctx.refits)
    if k < 2:
        return np.zeros((0, len(TaskValues.COLUMN_NAMES)))
    totals = np.array([replay_policy(policy, rc, doubly_robust=doubly_robust).columns().sum(
        axis=0) for rc in ctx.refits])
    return (totals - totals.mean(axis=0)) * np.sqrt(k / (k - 1))


def price_influence(policy, ctx: ReplayContext, values: TaskValues, *,
                    doubly_robust: bool = True, step: float = 0.01) -> np.ndarray:
    """[n, len(TaskValues.COLUMN_NAMES)] per-task terms that carry the sampling error of the
    rates the policy's prices were measured at into a bootstrap over tasks: the cached
    shares its prefix-cached prices use (``Window.share_terms``) and the response-cache hit
    rates of the families it caches responses for (``Window.response_influence``). Per
    rate, the sensitivity of the policy's totals (one more replay, the rate moved by
    ``step``) times each task's influence on the rate. Zero-sum per column. Without it a
    cache change's interval held only the spread of which tasks ran, not of the rate it is
    priced at (predictions varied 2.2x the interval's spread across windows)."""
    import dataclasses

    w = ctx.window
    influence = np.zeros((w.n, len(TaskValues.COLUMN_NAMES)))
    moves: list[tuple[Window, np.ndarray]] = []  # (the window with one rate moved, influence)
    terms = w.share_terms
    if terms is not None:
        on = [t for t, cached in policy.spec.cache.prefix.items() if cached]
        for p in sorted({int(terms.param[k]) for k, c in enumerate(w.combos) if c.tier in on}):
            cols = terms.param == p
            moves.append((dataclasses.replace(
                w, cost_prefix=w.cost_prefix + step * terms.slope * cols[None, :]),
                terms.influence[p]))
    rc = policy.spec.cache.response
    if rc.enabled:
        for family, each in sorted(w.response_influence.items()):
            if family in rc.exclude_families:
                continue
            moves.append((dataclasses.replace(w, response_hit_rate={
                **w.response_hit_rate, family: w.response_hit_rate[family] + step}), each))
    if not moves:
        return influence
    base = values.columns().sum(axis=0)
    for moved_window, each in moves:
        ctx.window = moved_window
        try:
            moved = replay_policy(policy, ctx, doubly_robust=doubly_robust)
        finally:
            ctx.window = w
        sensitivity = (moved.columns().sum(axis=0) - base) / step
        influence += (each - each.mean())[:, None] * sensitivity[None, :]
    return influence


def _start_indices(ctx: ReplayContext, routing, rows: np.ndarray) -> np.ndarray:
    from policies.routing import start_index

    if routing.forced_start is not None:
        k = np.full(len(rows), routing.forced_start, dtype=np.int64)
    elif routing.router == "fixed" or not routing.thresholds:
        k = np.zeros(len(rows), dtype=np.int64)
    else:
        score = np.full(len(rows), routing.bias)
        for name, w in routing.weights.items():
            j = ctx.feature_col.get(name)
            if j is not None:
                score = score + w * ctx.window.route_features[rows, j]
        k = np.searchsorted(np.asarray(routing.thresholds), score, side="right")
    step = max(1, len(rows) // ROUTING_CHECK_SAMPLE)
    for r in range(0, len(rows), step)[:ROUTING_CHECK_SAMPLE]:
        expected = start_index(routing, ctx.window.raw_features[rows[r]])
        if expected != k[r]:
            raise RoutingMismatch(f"task {ctx.window.task_ids[rows[r]]}: vectorised start "
                                  f"{k[r]} != policies.routing.start_index {expected}")
    return k


def replay_policy(policy, ctx: ReplayContext, *, envelope: str | None = None,
                  doubly_robust: bool = True) -> TaskValues:
    """Expected per-task values of ``policy`` on the window (see the module docstring).

    ``envelope``: None uses the outcome model everywhere; "low"/"high" set P(pass) of every
    combination the window never observed to 0/1 (the bounds of what the data can say).
    """
    from policies.routing import (
        first_tier_probabilities,
        resolve_routing,
        shadow_adapter,
        shadow_targets,
        shadow_variant,
        tier_plan,
    )

    w = ctx.window
    n = w.n
    out = {name: np.zeros(n) for name in TaskValues.COLUMN_NAMES}
    dr_weight = np.zeros(n)
    visited: set[tuple[int, tuple[int, ...]]] = set()
    spec = policy.spec
    prefix_on = spec.cache.prefix
    rc = spec.cache.response
    g = spec.guardrails
    resp_price = 0.0  # response hits are priced by the fleet manifest's per-call price
    for fam_code, family in enumerate(w.families):
        rows = ctx.family_rows[fam_code]
        if len(rows) == 0:
            continue
        routing = resolve_routing(policy, family)
        n_starts = len(routing.escalation)
        plans = []
        for s in range(n_starts):
            plan = tier_plan(policy, family, {}, start=s)
            codes = [w.combo_index(a.tier, a.variant, a.adapter) for a in plan]
            if min(codes) < 0:
                bad = next(a for a, c in zip(plan, codes) if c < 0)
                raise ValueError(f"policy v{policy.metadata.version}: family {family!r} "
                                 f"attempt {bad.attempt} uses {bad.tier}/{bad.variant}/"
                                 f"{bad.adapter}, which the fleet manifest does not serve")
            plans.append((plan, codes))
        hit = 0.0
        if rc.enabled and family not in rc.exclude_families:
            hit = w.response_hit_rate.get(family, 0.0)
        # Price of one attempt of each task on each combination of this family's plans.
        def price(code: int, rows=rows, hit=hit) -> np.ndarray:
            tier = w.combos[code].tier
            base = (w.cost_prefix if prefix_on.get(tier) else w.cost_nocache)[rows, code]
            return (1.0 - hit) * base + hit * resp_price

        starts = _start_indices(ctx, routing, rows)
        # Start distribution per routed index, from policies.routing itself.
        mix = np.zeros((len(rows), n_starts))
        for k in np.unique(starts):
            members = np.flatnonzero(starts == k)
            probs = first_tier_probabilities(policy, family, w.raw_features[rows[members[0]]])
            for s, p in probs.items():
                mix[members, s] = p
        routed = np.zeros((len(rows), n_starts))
        routed[np.arange(len(rows)), starts] = 1.0

        verifier = w.verifier_per_attempt[rows]
        # A response-cache hit counts no tokens toward the task's cap (serving.guardrails).
        tokens = ctx.tokens[rows] * (1.0 - hit)
        routes = _family_routes(w, rows) if doubly_robust else []
        per_start = []
        for s, (plan, codes) in enumerate(plans):
            values = _walk_plan(ctx, fam_code, codes, price, verifier, tokens, g, envelope,
                                visited)
            if doubly_robust:
                _correct(values, codes, routes, price, verifier, mix[:, s], dr_weight, rows,
                         w.accept_rate)
            per_start.append({k: v for k, v in values.items() if not k.startswith("_")})

        # Shadow: the first attempt also runs on another tier of the order (evaluation).
        shadow = np.zeros(len(rows))
        if routing.shadow_rate > 0:
            for s, (plan, codes) in enumerate(plans):
                targets = shadow_targets(routing, plan[0].tier)
                for tier in targets:
                    if (tier in routing.escalation and tier not in routing.shadow_variants
                            and tier not in routing.shadow_adapters):
                        t_code = plans[routing.escalation.index(tier)][1][0]
                    else:  # a shadow-only tier, variant or adapter (exploration): its price
                        t_code = w.combo_index(tier, shadow_variant(policy, tier),
                                               shadow_adapter(routing, tier))
                    if t_code < 0:
                        raise ValueError(f"policy v{policy.metadata.version}: a shadow on "
                                         f"{tier} uses a combination the fleet does not serve")
                    # A shadow is verified like any attempt: its call and its verification.
                    shadow += (mix[:, s] * routing.shadow_rate / len(targets)
                               * (price(t_code) + verifier))
        for name in ("green", "fpy", "serve", "rework", "verifier", "attempts",
                     "unsupported", "budget_exceeded"):
            stacked = np.stack([v[name] for v in per_start], axis=1)
            out[name][rows] = (stacked * mix).sum(axis=1)
            if name in ("serve", "rework", "verifier"):
                # Exploration's extra spend over the routed plan is evaluation spend.
                routed_value = (stacked * routed).sum(axis=1)
                out["eval"][rows] += out[name][rows] - routed_value
                out[name][rows] = routed_value
        out["eval"][rows] += shadow
    out["cost"] = out["serve"] + out["rework"] + out["verifier"] + out["eval"]
    return TaskValues(green=out["green"], cost=out["cost"], fpy=out["fpy"],
                      attempts=out["attempts"], serve=out["serve"], rework=out["rework"],
                      verifier=out["verifier"], eval=out["eval"],
                      budget_exceeded=out["budget_exceeded"], unsupported=out["unsupported"],
                      dr_weight=dr_weight, states=frozenset(visited))


def _walk_plan(ctx, fam_code, codes, price, verifier, tokens, g, envelope,
               visited: set | None = None) -> dict:
    """Model values of one plan, from every position onward (backward recursion).

    ``_G[j]``, ``_C[j]`` ... are the expected green, spend ... of the rest of the plan
    for a task that has reached position j (positions 0..j-1 ran whole and failed).
    Position j >= ``_allowed`` is where the logged outcomes stop standing for the plan
    (``_correct``): a $ or token cap may act there. The attempt cap needs nothing here: the
    plan already stops at the routing's ``max_attempts``, which ``resolve_routing`` bounds by
    ``max_attempts_per_task``.

    The caps are the gateway's rule (``policies.caps``) applied to a task's realised spend,
    which the window knows only in distribution (``_cap_odds``): per position, the chance
    the attempt runs at all and the chance it runs whole (a cap reached between its calls
    cuts it, a token cap clips its crossing call: either fails it and ends the task
    ``budget_exceeded``).
    """
    n, A = len(verifier), len(codes)
    costs, probs, unsup = [], [], []
    hist = [0.0] * len(ctx.rank_pos)
    for j, code in enumerate(codes):
        costs.append(price(code))
        probs.append(ctx.pass_prob(fam_code, code, tuple(hist), j + 1, envelope))
        if visited is not None:
            visited.add((code, tuple(int(h) for h in hist)))
        unsup.append(0.0 if ctx.is_supported(code, tuple(hist)) else 1.0)
        hist[ctx.tier_pos[ctx.window.combos[code].tier]] += 1.0
    runs, whole, checked, paid = _cap_odds(ctx, fam_code, costs, tokens, g)
    allowed = np.full(n, A, dtype=np.int64)
    for j in range(A - 1, -1, -1):
        sure = whole[j] >= 1.0 - CAP_CERTAIN
        allowed = np.where(sure, allowed, j)
    G = [np.zeros(n) for _ in range(A + 1)]
    C, V, T, E, U = ([np.zeros(n) for _ in range(A + 1)] for _ in range(5))
    for j in range(A - 1, -1, -1):
        reached = whole[j - 1] if j else np.ones(n)  # the attempt before ran whole (failed)
        r = _given(runs[j], reached)
        q = _given(whole[j], runs[j])
        on = q * (1.0 - probs[j])  # ran whole and failed: the plan goes on
        G[j] = r * q * probs[j] + r * on * G[j + 1]
        C[j] = _given(paid[j], reached) + r * on * C[j + 1]
        # A cut attempt ends in the gateway's refusal: the harness verifies nothing (a
        # clipped answer is verified, and fails).
        V[j] = _given(checked[j], reached) * verifier + r * on * V[j + 1]
        T[j] = r + r * on * T[j + 1]
        # Refused here, or cut (a refusal mid-attempt), or clipped with a step left (the
        # next is refused): budget_exceeded. A clipped last attempt just fails.
        cut = _given(runs[j] - checked[j], runs[j])
        clip = _given(checked[j] - whole[j], runs[j])
        E[j] = (1.0 - r) + r * (cut + (clip if j + 1 < A else 0.0)) + r * on * E[j + 1]
        U[j] = r * unsup[j] + r * on * U[j + 1]
    serve = paid[0]
    return {
        "green": G[0] * ctx.window.accept_rate,
        "serve": serve,
        "rework": C[0] - serve,
        "verifier": V[0],
        "attempts": T[0],
        "unsupported": U[0],
        "fpy": whole[0] * probs[0],
        "budget_exceeded": E[0],
        "_G": G, "_C": C, "_V": V, "_T": T, "_E": E, "_costs": costs, "_allowed": allowed,
    }


def _given(joint: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """joint / condition where the condition can happen, else 0 (a state never reached)."""
    return np.divide(joint, condition, out=np.zeros_like(joint, dtype=float),
                     where=condition > 0)


# Below this chance of a cap acting on an attempt, the logged outcome stands for it.
CAP_CERTAIN = 0.01
# Share of an attempt's spend paid when a cap cuts it between calls (calls before the cut).
CUT_SHARE = 0.5


# Draws of each task's attempt spend behind the cap odds: stratified (every draw a quantile
# of the spread, in a random order per task and position), so few suffice.
CAP_DRAWS = 32


def _spend_draws(ctx, fam_code: int, position: int) -> np.ndarray:
    """[CAP_DRAWS, tasks of the family] multipliers of each task's mean attempt spend at one
    plan position: the log-normal of the window's measured spread (``Window.attempt_cv``),
    mean exactly 1. Seeded by (family, position) and kept on the context, so every policy
    replayed on the window sees the same draws whatever the length of its plans."""
    key = (fam_code, position)
    draws = ctx.cap_draws.get(key)
    if draws is None:
        from scipy.special import ndtri

        sigma = float(np.sqrt(np.log1p(float(ctx.window.attempt_cv) ** 2)))
        levels = np.exp(sigma * ndtri((np.arange(CAP_DRAWS) + 0.5) / CAP_DRAWS))
        levels /= levels.mean()
        n_f = len(ctx.family_rows[fam_code])
        rng = np.random.default_rng([20261204, fam_code, position])
        order = rng.random((CAP_DRAWS, n_f)).argsort(axis=0)
        draws = levels[order].astype(np.float32)
        ctx.cap_draws[key] = draws
    return draws


def _cap_odds(ctx, fam_code, costs, tokens, g) -> tuple[list, list, list, list]:
    """Per plan position, unconditional: P(the attempt runs), P(it runs whole), P(its answer
    is verified: it was not cut) and the spend it is paid (E[spend; runs]).

    A task's attempt j runs while the spend of attempts 0..j-1 is below every cap (the
    gateway checks before each call: ``policies.caps``); it runs whole when the spend before
    its last call is too (``(k - 1) / k`` of the attempt for k calls) and, under a token
    cap, that call's output fits what is left (the gateway clips it, ``max_tokens_left``,
    and a clipped answer fails). A cut attempt is paid ``CUT_SHARE`` of its spend. An
    attempt's spend is the task's mean (shrunk toward its family's, ``Window.spend_scale``)
    times a draw of the window's measured spread (``_spend_draws``), independent between
    positions; $ and tokens move together. No $ or token cap: every attempt runs whole.
    """
    from policies.caps import cap_reached

    A = len(costs)
    n = len(costs[0]) if A else 0
    if g.max_usd_per_task is None and g.max_tokens_per_task is None:
        ones = [np.ones(n) for _ in range(A)]
        return ones, ones, ones, list(costs)
    w = ctx.window
    rows = ctx.family_rows[fam_code]
    scale = w.spend_scale[rows] if w.spend_scale is not None else np.ones(n)
    k = w.calls_per_attempt[rows] if w.calls_per_attempt is not None else np.ones(n)
    before = (k - 1.0) / k
    total = w.input_tokens[rows] + w.output_tokens[rows]
    out_share = np.divide(w.output_tokens[rows], total, out=np.zeros(n), where=total > 0)
    clip = np.minimum(before + out_share / k, 1.0)
    f32 = np.float32
    before, clip = before.astype(f32), clip.astype(f32)
    # Per cap the policy sets: its limit, each position's mean attempt spend in its unit, and
    # whether the gateway clips the crossing call (token caps: ``max_tokens_left``).
    units = [(g.max_usd_per_task, [(c * scale).astype(f32) for c in costs], False),
             (g.max_tokens_per_task, [(tokens * scale).astype(f32)] * A, True)]
    units = [(limit, means, clips) for limit, means, clips in units if limit is not None]
    spent = [np.zeros((CAP_DRAWS, n), dtype=f32) for _ in units]
    runs, whole, checked, paid = [], [], [], []
    for j in range(A):
        eps = _spend_draws(ctx, fam_code, j)
        run = np.ones((CAP_DRAWS, n), dtype=bool)
        cut = np.zeros_like(run)  # a cap reached before the attempt's last call
        clipped = np.zeros_like(run)  # its last call's output passes the tokens left
        for i, (limit, means, clips) in enumerate(units):
            x = means[j] * eps
            run &= ~cap_reached(limit, spent[i])
            cut |= cap_reached(limit, spent[i] + before * x)
            if clips:
                clipped |= spent[i] + clip * x > limit
            spent[i] = spent[i] + x
        cut &= run
        done = run & ~cut & ~clipped
        runs.append(run.mean(axis=0))
        whole.append(done.mean(axis=0))
        checked.append((run & ~cut).mean(axis=0))
        paid.append(costs[j] * ((run * eps).mean(axis=0)
                                - (1.0 - CUT_SHARE) * (cut * eps).mean(axis=0)))
    return runs, whole, checked, paid


@dataclass
class _Route:
    """One way the window observed a task's trajectory from its first attempt on.

    ``combo``/``passed`` [n, W]: the combination and verdict of each position; ``length``
    [n]: positions observed (0: the route did not happen for the task); ``green`` [n, W]:
    the Green PR credited when position j passes; ``prop`` [n]: the odds the route shows
    what it shows."""

    combo: np.ndarray
    passed: np.ndarray
    length: np.ndarray
    green: np.ndarray
    prop: np.ndarray


def _family_routes(w: Window, rows: np.ndarray) -> list[_Route]:
    """The routes of a family's tasks: the served path from its logged start (odds: the
    start's), and a shadow's own verdict (odds: the share of the family's tasks shadowed on
    that combination, since a shadow shows its verdict whatever the start). A shadow that
    passed is credited the window's acceptance rate (no review of a shadow's answer is
    recorded).

    The served path after a shadow is not read as the cascade's next steps. Its odds are
    the start's times the shadow's, so a task explored to an unusual start with a shadow
    weighed hundreds of tasks (explored int8 variants: intervals 16.6 pts wide covering
    0.77; its verdict alone: 8.0 pts, 0.81). The outcome model carries those steps from the
    state the shadow's failure reaches, whose correction reads the same tasks as joint
    evidence (``ReplayContext.state_shift``)."""
    lcombo, lpassed, llen = w.logged_combo[rows], w.logged_passed[rows], w.logged_len[rows]
    lgreen = w.green[rows].astype(float)
    served = _Route(lcombo, lpassed, llen, np.repeat(lgreen[:, None], lcombo.shape[1], 1),
                    w.propensity[rows])
    if w.shadow_combo is None or w.shadow_propensity is None:
        return [served]
    s_combo, s_passed = w.shadow_combo[rows], w.shadow_passed[rows]
    s_prop = w.shadow_propensity[rows]
    if not ((s_combo >= 0) & np.isfinite(s_prop)).any():
        return [served]
    shadowed = _Route(
        combo=s_combo[:, None], passed=s_passed[:, None],
        length=(s_combo >= 0).astype(np.int64),
        green=np.full((len(rows), 1), w.accept_rate),
        prop=_shadow_share(s_combo, s_prop))
    return [served, shadowed]


def _shadow_share(s_combo: np.ndarray, s_prop: np.ndarray) -> np.ndarray:
    """Per task with a shadow: the share of the family's tasks shadowed on that same
    combination (the odds, over every start, that a task's verdict on it is shown by a
    shadow; a task's own logged odds hold only given the start it had)."""
    out = np.full(len(s_combo), np.nan)
    known = (s_combo >= 0) & np.isfinite(s_prop)
    if known.any():
        counts = np.bincount(s_combo[known])
        out[known] = counts[s_combo[known]] / len(s_combo)
    return out


def _correct(values, codes, routes: list[_Route], price, verifier, p_start, dr_weight, rows,
             accept_rate) -> None:
    """Doubly-robust correction of one start's values from the logged tasks whose route
    shows the plan's first attempt: the observed outcomes for as long as the route follows
    this plan, then the model from the state reached (so which tasks count never depends on
    outcomes).

    Each route alone is an inverse-propensity correction; where both show a start (tasks
    that started on Y, and tasks that started elsewhere with a shadow on Y), the two are
    mixed with weights fixed by how many tasks each route matched (a mix of unbiased
    corrections with weights summing to 1 stays unbiased; adding them would count the
    start's tasks twice)."""
    matched = []
    for route in routes:
        prop = route.prop
        ok = (route.combo[:, 0] == codes[0]) & (route.length > 0) & np.isfinite(prop) & (prop > 0)
        matched.append(ok)
    total = sum(int(m.sum()) for m in matched)
    if total == 0:
        return
    model = {name: values[name].copy() for name in
             ("fpy", "green", "serve", "rework", "verifier", "attempts", "budget_exceeded")}
    for route, ok in zip(routes, matched, strict=True):
        count = int(ok.sum())
        if count == 0:
            continue
        share = count / total
        weight = np.where(ok, share / np.where(ok, route.prop, 1.0), 0.0)
        dr_weight[rows] += p_start * weight
        observed = _observe(values, codes, route, ok, price, verifier, accept_rate)
        for name, obs in observed.items():
            values[name] = values[name] + weight * (obs - model[name])


def _observe(values, codes, route: _Route, ok, price, verifier, accept_rate) -> dict:
    """Per task of the route: the plan's values read from the route while it follows the
    plan, then the model's from the state reached (``_walk_plan``'s ``_G``, ``_C``...)."""
    width = route.combo.shape[1]
    allowed = values["_allowed"]
    n = len(ok)
    fpy = np.where(allowed > 0, route.passed[:, 0].astype(float), values["fpy"])
    green = np.zeros(n)
    cost = np.zeros(n)
    ver = np.zeros(n)
    att = np.zeros(n)
    exc = np.zeros(n)
    following = ok.copy()  # still reading observed outcomes
    A = len(codes)
    for j in range(A + 1):
        if j < A and j < width:
            agree = (following & (j < route.length) & (route.combo[:, j] == codes[j])
                     & (allowed > j))
        else:
            agree = np.zeros(n, dtype=bool)
        switch = following & ~agree
        # From position j on, the model carries the task.
        green += np.where(switch, values["_G"][j] * accept_rate, 0.0)
        cost += np.where(switch, values["_C"][j], 0.0)
        ver += np.where(switch, values["_V"][j], 0.0)
        att += np.where(switch, values["_T"][j], 0.0)
        exc += np.where(switch, values["_E"][j], 0.0)
        if j == A or not agree.any():
            break
        cost += np.where(agree, values["_costs"][j], 0.0)
        ver += np.where(agree, verifier, 0.0)
        att += agree
        passed = agree & route.passed[:, j]
        green += np.where(passed, route.green[:, j], 0.0)
        following = agree & ~route.passed[:, j]
    # A task whose first attempt a cap may act on is carried by the model from the start.
    serve = np.where(ok & (allowed > 0), price(codes[0]), np.where(ok, values["serve"], 0.0))
    return {"fpy": fpy, "green": green, "serve": serve, "rework": cost - serve,
            "verifier": ver, "attempts": att, "budget_exceeded": exc}
