"""The counterfactual replay: what a window would have cost and produced under a policy.

For every task the policy is applied exactly as the gateway applies it, through
``policies.routing`` (``resolve_routing``, ``tier_plan``, ``first_tier_probabilities``,
``shadow_tier``); only the linear difficulty score is evaluated for all tasks at once, and
each replay checks a sample of tasks against ``routing.start_index`` so the two can never
drift apart silently.

Per task and per possible start tier, the attempts of the plan are walked with the
outcome model's P(pass) (direct method): reach probability, expected spend (each attempt
priced by the cost model for its tier, variant and cache setting, plus verifier compute),
P(Green), P(first attempt passes). Guardrail caps cut the plan where the expected spend or
tokens would exceed them (the task ends ``budget_exceeded``). The start distribution
(routing plus exploration) mixes the plans; the shadow rate adds evaluation spend.

Off-policy correction (doubly robust): where the policy's plan from the logged start tier
reproduces the logged trajectory up to where it ended, the observed outcome corrects the
model, weighted by P_policy(start) / logged propensity. Combinations the window never
observed are reported through ``unsupported`` mass, which the estimator turns into wider
intervals (``estimator.estimate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.outcomes import OutcomeModels
from experiments.window import Window

__all__ = ["ReplayContext", "RoutingMismatch", "TaskValues", "replay_policy"]

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

    def columns(self) -> np.ndarray:
        return np.stack([self.green, self.cost, self.fpy, self.serve, self.rework,
                         self.verifier, self.eval, self.attempts, self.budget_exceeded,
                         self.unsupported], axis=1)

    COLUMN_NAMES = ("green", "cost", "fpy", "serve", "rework", "verifier", "eval",
                    "attempts", "budget_exceeded", "unsupported")


class ReplayContext:
    """What replays of one window share: fold logits, supported combos, family rows."""

    def __init__(self, window: Window, models: OutcomeModels, *, min_support: int = 20):
        self.window = window
        self.models = models
        self.logits = models.task_combo_logits(window.model_features)  # [K, n, C]
        self.supported = window.combo_attempts >= min_support
        self.min_support = min_support
        self.family_rows = [np.flatnonzero(window.family_code == f)
                            for f in range(len(window.families))]
        self.feature_col = {name: j for j, name in enumerate(window.feature_names)}
        self.rank_pos = {r: i for i, r in enumerate(sorted({c.rank for c in window.combos}))}
        self.tier_pos = {c.tier: self.rank_pos[c.rank] for c in window.combos}
        self.tokens = window.input_tokens + window.output_tokens
        self._prob_cache: dict[tuple, np.ndarray] = {}

    def is_supported(self, combo: int, hist: tuple[float, ...]) -> bool:
        """Observed often enough: the combination, and it after these failures."""
        state = (combo, tuple(int(h) for h in hist))
        return bool(self.supported[combo]) and (
            self.window.state_attempts.get(state, 0) >= self.min_support)

    def pass_prob(self, family: int, combo: int, hist: tuple[float, ...], attempt: int,
                  envelope: str | None) -> np.ndarray:
        """P(pass) of every task of ``family`` on ``combo`` after failures ``hist``."""
        if envelope is not None and not self.is_supported(combo, hist):
            return np.full(len(self.family_rows[family]), 0.0 if envelope == "low" else 1.0)
        key = (family, combo, hist, attempt)
        cached = self._prob_cache.get(key)
        if cached is None:
            rows = self.family_rows[family]
            shift = self.models.history_shift(np.asarray(hist), attempt)
            z = self.logits[:, rows, combo] + shift[:, None]
            cached = self.models.calibrate(z)
            if len(self._prob_cache) > 4096:
                self._prob_cache.clear()
            self._prob_cache[key] = cached
        return cached


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
        shadow_tier,
        tier_plan,
    )

    w = ctx.window
    n = w.n
    out = {name: np.zeros(n) for name in TaskValues.COLUMN_NAMES}
    dr_weight = np.zeros(n)
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
        tokens = ctx.tokens[rows]
        prop = w.propensity[rows]
        lcombo = w.logged_combo[rows]
        lpassed = w.logged_passed[rows]
        llen = w.logged_len[rows]
        lgreen = w.green[rows].astype(float)
        per_start = []
        for s, (plan, codes) in enumerate(plans):
            values = _walk_plan(ctx, fam_code, codes, price, verifier, tokens, g, envelope)
            if doubly_robust:
                _correct(values, codes, lcombo, lpassed, llen, lgreen, price, verifier,
                         mix[:, s], prop, dr_weight, rows, w.accept_rate)
            per_start.append({k: v for k, v in values.items() if not k.startswith("_")})

        # Shadow: the first attempt also runs on another tier of the order (evaluation).
        shadow = np.zeros(len(rows))
        if routing.shadow_rate > 0 and n_starts > 1:
            for s, (plan, codes) in enumerate(plans):
                first = plan[0].tier
                others = n_starts - 1
                for m in range(others):
                    tier = shadow_tier(policy, family, first, 0.0, (m + 0.5) / others)
                    if tier is None:
                        continue
                    t_plan = plans[routing.escalation.index(tier)][1][0]
                    shadow += mix[:, s] * routing.shadow_rate / others * price(t_plan)
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
                      dr_weight=dr_weight)


def _walk_plan(ctx, fam_code, codes, price, verifier, tokens, g, envelope) -> dict:
    """Model values of one plan, from every position onward (backward recursion).

    ``_G[j]``, ``_C[j]`` ... are the expected green, spend ... of the rest of the plan
    for a task that has failed positions 0..j-1; position j >= ``_allowed`` is past a
    guardrail cap (the task ends there ``budget_exceeded``).
    """
    n, A = len(verifier), len(codes)
    costs, probs, unsup = [], [], []
    spent = np.zeros(n)
    used = np.zeros(n)
    allowed = np.full(n, A, dtype=np.int64)
    hist = [0.0] * len(ctx.rank_pos)
    for j, code in enumerate(codes):
        c = price(code)
        ok = np.ones(n, dtype=bool)
        if g.max_usd_per_task is not None:
            ok &= spent + c <= g.max_usd_per_task
        if g.max_tokens_per_task is not None:
            ok &= used + tokens <= g.max_tokens_per_task
        allowed[~ok & (allowed == A)] = j
        costs.append(c)
        probs.append(ctx.pass_prob(fam_code, code, tuple(hist), j + 1, envelope))
        unsup.append(0.0 if ctx.is_supported(code, tuple(hist)) else 1.0)
        spent = spent + c
        used = used + tokens
        hist[ctx.tier_pos[ctx.window.combos[code].tier]] += 1.0
    cut = (allowed < A).astype(float)
    G = [np.zeros(n)] * (A + 1)
    C, V, T, E, U = ([np.zeros(n)] * (A + 1) for _ in range(5))
    G, C, V, T, E, U = list(G), list(C), list(V), list(T), list(E), list(U)
    E[A] = cut
    for j in range(A - 1, -1, -1):
        live = allowed > j
        q = 1.0 - probs[j]
        G[j] = np.where(live, probs[j] + q * G[j + 1], 0.0)
        C[j] = np.where(live, costs[j] + q * C[j + 1], 0.0)
        V[j] = np.where(live, verifier + q * V[j + 1], 0.0)
        T[j] = np.where(live, 1.0 + q * T[j + 1], 0.0)
        E[j] = np.where(live, q * E[j + 1], cut)
        U[j] = np.where(live, unsup[j] + q * U[j + 1], 0.0)
    first_live = allowed > 0
    serve = np.where(first_live, costs[0], 0.0)
    return {
        "green": G[0] * ctx.window.accept_rate,
        "serve": serve,
        "rework": C[0] - serve,
        "verifier": V[0],
        "attempts": T[0],
        "unsupported": U[0],
        "fpy": np.where(first_live, probs[0], 0.0),
        "budget_exceeded": E[0],
        "_G": G, "_C": C, "_V": V, "_T": T, "_E": E, "_costs": costs, "_allowed": allowed,
    }


def _correct(values, codes, lcombo, lpassed, llen, lgreen, price, verifier, p_start, prop,
             dr_weight, rows, accept_rate) -> None:
    """Doubly-robust correction of one start's values from the logged tasks that started
    there: the observed outcomes for as long as the logged attempts follow this plan, then
    the model from the state reached (so which tasks count never depends on outcomes)."""
    width = lcombo.shape[1]
    allowed = values["_allowed"]
    first_match = (lcombo[:, 0] == codes[0]) & (llen > 0) & np.isfinite(prop) & (prop > 0)
    if not first_match.any():
        return
    weight = np.where(first_match, 1.0 / np.where(first_match, prop, 1.0), 0.0)
    dr_weight[rows] += p_start * weight
    fpy_obs = lpassed[:, 0].astype(float)
    values["fpy"] = values["fpy"] + weight * (allowed > 0) * (fpy_obs - values["fpy"])
    n = len(llen)
    green = np.zeros(n)
    cost = np.zeros(n)
    ver = np.zeros(n)
    att = np.zeros(n)
    exc = np.zeros(n)
    following = first_match.copy()  # still reading observed outcomes
    A = len(codes)
    for j in range(A + 1):
        if j < A and j < width:
            agree = following & (j < llen) & (lcombo[:, j] == codes[j]) & (allowed > j)
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
        passed = agree & lpassed[:, j]
        green += np.where(passed, lgreen, 0.0)
        following = agree & ~lpassed[:, j]
    serve = np.where(first_match & (allowed > 0), price(codes[0]), 0.0)
    observed = {"green": green, "serve": serve, "rework": cost - serve, "verifier": ver,
                "attempts": att, "budget_exceeded": exc}
    for name, obs in observed.items():
        values[name] = values[name] + weight * (obs - values[name])
