"""A telemetry window compiled once into numpy arrays the replay reads many times.

``Window`` holds, per task: its family, its features (as ``policies.routing`` reads them),
its token usage per attempt, the serve trajectory the logging policy actually took (tiers,
variants, adapters, verdicts, the first attempt's propensity) and its observed Green PR;
per fleet combination (tier, variant, adapter) the price of one attempt of each task with
and without prefix caching; and the joint-outcome evidence of shadow attempts (a task's
verdict on one tier after its failure on another, ``_joint_evidence``). Building it is the
only pandas work; everything after is vectorised numpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = ["Combo", "Window", "build_window", "fleet_combos", "load_estimator_window"]

# Longest logged serve trajectory kept per task; longer repair loops are cut (and counted).
MAX_LOGGED_ATTEMPTS = 8
# Categorical feature values one-hot encoded for the outcome model (most frequent first).
MAX_CATEGORIES = 12


@dataclass(frozen=True)
class Combo:
    """One way an attempt can be served: a tier, its quantization variant, an adapter."""

    tier: str
    variant: str
    adapter: str | None
    rank: int

    @property
    def label(self) -> str:
        return f"{self.tier}/{self.variant}" + (f"+{self.adapter}" if self.adapter else "")


def fleet_combos(fleet: FleetManifest) -> list[Combo]:
    """Every (tier, variant, adapter-or-none) the manifest can serve, tiers by rank."""
    out = []
    for t in fleet.tiers:
        for v in t.variants:
            out.append(Combo(t.name, v.name, None, t.rank))
            for a in v.adapters:
                out.append(Combo(t.name, v.name, a.name, t.rank))
    return out


@dataclass
class Window:
    """The compiled window (see the module docstring). Arrays are indexed by task."""

    task_ids: np.ndarray
    families: list[str]
    family_code: np.ndarray  # [n]
    feature_names: list[str]  # every feature key seen
    route_features: np.ndarray  # [n, F] features as policies.routing scores them (float)
    model_features: np.ndarray  # [n, G] standardised numeric + one-hot categorical + family
    model_feature_names: list[str]
    raw_features: list[dict[str, Any]]  # parsed feature dicts (for exact routing checks)
    tiers: list[str]
    combos: list[Combo]
    default_variant: dict[str, str]
    input_tokens: np.ndarray  # [n] mean input tokens per attempt
    output_tokens: np.ndarray  # [n]
    cached_share: dict[str, float]  # tier -> share of input tokens cached where prefix ran
    cost_nocache: np.ndarray  # [n, C] $ of one attempt per combo, no prefix cache
    cost_prefix: np.ndarray  # [n, C] $ with prefix caching at the tier's observed share
    verifier_per_attempt: np.ndarray  # [n]
    logged_combo: np.ndarray  # [n, A] combo code of serve attempt j (-1 none)
    logged_passed: np.ndarray  # [n, A] bool
    logged_len: np.ndarray  # [n]
    propensity: np.ndarray  # [n] of the first serve attempt (NaN unknown)
    green: np.ndarray  # [n] observed Green PR
    accept_rate: float  # P(Green | verifier passed) in the window
    combo_attempts: np.ndarray  # [C] attempts observed per combo (serve+shadow+gate)
    # (combo, failures per tier) seen: attempt rows plus joint-evidence rows
    state_attempts: dict[tuple[int, tuple[int, ...]], int]
    response_hit_rate: dict[str, float]  # family -> share of calls served by response cache
    attempts_frame: pd.DataFrame  # attempt rows for the outcome model (see _attempt_rows)
    notes: list[str] = field(default_factory=list)
    # Joint-outcome evidence (``_joint_evidence``): verdicts of a task's attempts read after
    # the failures of its attempts on other tiers (shadow beside serve). None: none built.
    joint_frame: pd.DataFrame | None = None
    # How one attempt's spend varies (``_spend_spread``), for guardrail caps, which act on
    # realised spend call by call: calls per attempt [n]; the coefficient of variation of an
    # attempt's tokens around its task's mean (pooled over tasks seen twice or more); and
    # each task's mean shrunk toward its family's (empirical Bayes), as a factor [n].
    calls_per_attempt: np.ndarray | None = None
    attempt_cv: float = 0.0
    spend_scale: np.ndarray | None = None
    # A task's shadow beside its first serve attempt (``_shadow_routes``): its combo (-1
    # none), verdict, and the route's propensity, P(start) x the shadow's odds (NaN unknown:
    # telemetry that logs no shadow odds). With the served path after it, the cascade that
    # starts on the shadow's tier is observed on that task (``experiments.replay._correct``).
    shadow_combo: np.ndarray | None = None
    shadow_passed: np.ndarray | None = None
    shadow_propensity: np.ndarray | None = None
    # How ``cost_prefix`` moves with the cached shares it was priced at (a share is measured
    # on the window's own calls, so another sample gives another): ``ShareTerms``.
    share_terms: ShareTerms | None = None
    # Per family with response-cache hits: each task's first-order influence on the
    # family's hit rate (its response calls minus rate x its calls, over the family's
    # calls), so a resample of the tasks moves the rate as re-measuring it would.
    response_influence: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.task_ids)

    def combo_index(self, tier: str, variant: str | None, adapter: str | None) -> int:
        variant = variant or self.default_variant.get(tier)
        return self._combo_lookup.get((tier, variant, adapter), -1)

    def __post_init__(self) -> None:
        self._combo_lookup = {(c.tier, c.variant, c.adapter): i for i, c in enumerate(self.combos)}

    def subset(self, rows: np.ndarray) -> Window:
        """The window restricted to some tasks (train/test splits, bootstrap checks)."""
        rows = np.asarray(rows)
        keep = set(self.task_ids[rows].tolist())
        frame = self.attempts_frame[self.attempts_frame["task_id"].isin(keep)]
        remap = {tid: i for i, tid in enumerate(self.task_ids[rows].tolist())}
        frame = frame.assign(task=frame["task_id"].map(remap).astype(np.int64))
        joint = self.joint_frame
        if joint is not None:
            joint = joint[joint["task_id"].isin(keep)]
            joint = joint.assign(task=joint["task_id"].map(remap).astype(np.int64))
        return Window(
            task_ids=self.task_ids[rows], families=self.families,
            family_code=self.family_code[rows], feature_names=self.feature_names,
            route_features=self.route_features[rows], model_features=self.model_features[rows],
            model_feature_names=self.model_feature_names,
            raw_features=[self.raw_features[i] for i in rows.tolist()], tiers=self.tiers,
            combos=self.combos, default_variant=self.default_variant,
            input_tokens=self.input_tokens[rows], output_tokens=self.output_tokens[rows],
            cached_share=self.cached_share, cost_nocache=self.cost_nocache[rows],
            cost_prefix=self.cost_prefix[rows],
            verifier_per_attempt=self.verifier_per_attempt[rows],
            logged_combo=self.logged_combo[rows], logged_passed=self.logged_passed[rows],
            logged_len=self.logged_len[rows], propensity=self.propensity[rows],
            green=self.green[rows], accept_rate=self.accept_rate,
            combo_attempts=np.bincount(frame["combo"].to_numpy(), minlength=len(self.combos)),
            state_attempts=_state_attempts(frame, len(self.tiers), joint),
            response_hit_rate=self.response_hit_rate, attempts_frame=frame,
            notes=list(self.notes), joint_frame=joint,
            calls_per_attempt=_rows_of(self.calls_per_attempt, rows),
            attempt_cv=self.attempt_cv, spend_scale=_rows_of(self.spend_scale, rows),
            shadow_combo=_rows_of(self.shadow_combo, rows),
            shadow_passed=_rows_of(self.shadow_passed, rows),
            shadow_propensity=_rows_of(self.shadow_propensity, rows),
            share_terms=None if self.share_terms is None else self.share_terms.subset(rows),
            response_influence={f: v[rows] for f, v in self.response_influence.items()})


@dataclass
class ShareTerms:
    """The cached shares ``cost_prefix`` was priced at, as parameters with sampling error.

    ``names`` [P]: a tier whose calls showed cached tokens, then ``pooled`` (their mean, used
    for tiers that never cached); ``param`` [C]: the parameter each combination's prefix
    price uses; ``slope`` [n, C]: d cost_prefix / d that share (0 where the cell is a charge
    the share does not enter); ``influence`` [P, n]: each task's first-order influence on
    each share (its cached minus share x input tokens on the tier, over the tier's input
    tokens), so a resample of the tasks moves the shares as re-measuring them would."""

    names: list[str]
    param: np.ndarray
    slope: np.ndarray
    influence: np.ndarray

    def subset(self, rows: np.ndarray) -> ShareTerms:
        return ShareTerms(self.names, self.param, self.slope[rows], self.influence[:, rows])


def _rows_of(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[rows]


def _parse_features(series: pd.Series) -> list[dict[str, Any]]:
    out = []
    for text in series.fillna("{}").tolist():
        try:
            value = json.loads(text) if text else {}
        except (TypeError, ValueError):
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def _feature_matrices(raw: list[dict[str, Any]], families: np.ndarray, n_families: int,
                      family_names: list[str]):
    from policies.routing import feature_number  # the routing's own reading of a feature

    names = sorted({k for d in raw for k in d})
    route = np.zeros((len(raw), len(names)))
    numeric_cols, categorical = [], {}
    for j, name in enumerate(names):
        values = [d.get(name) for d in raw]
        route[:, j] = [feature_number(v) for v in values]
        is_number = all(v is None or isinstance(v, (int, float, bool)) for v in values)
        if is_number:
            numeric_cols.append(j)
        else:
            counts = pd.Series([str(v) for v in values]).value_counts()
            categorical[name] = (values, list(counts.index[:MAX_CATEGORIES]))
    blocks, block_names = [], []
    if numeric_cols:
        num = route[:, numeric_cols]
        mean, std = num.mean(axis=0), num.std(axis=0)
        std[std == 0] = 1.0
        blocks.append((num - mean) / std)
        block_names += [names[j] for j in numeric_cols]
    for name, (values, cats) in categorical.items():
        text = np.array([str(v) for v in values], dtype=object)
        for cat in cats:
            blocks.append((text == cat).astype(float)[:, None])
            block_names.append(f"{name}={cat}")
    if n_families > 1:
        onehot = np.zeros((len(raw), n_families))
        onehot[np.arange(len(raw)), families] = 1.0
        blocks.append(onehot)
        block_names += [f"family={f}" for f in family_names]
    model = np.hstack(blocks) if blocks else np.zeros((len(raw), 0))
    return names, route, model, block_names


def build_window(tasks: pd.DataFrame, attempts: pd.DataFrame, calls: pd.DataFrame,
                 fleet: FleetManifest, *, default_verifier_cost_usd: float = 0.0) -> Window:
    """Compile the three telemetry tables of a window against the fleet manifest."""
    from economics.costmodel import green_pr_mask

    notes: list[str] = []
    tasks = tasks.drop_duplicates("task_id").reset_index(drop=True)
    tasks = tasks[tasks["task_id"].notna()].reset_index(drop=True)
    n = len(tasks)
    if n == 0:
        raise ValueError("the telemetry window holds no tasks (agent.task spans)")
    task_ids = tasks["task_id"].astype(str).to_numpy()
    index = pd.Index(task_ids)
    fam_codes, fam_names = pd.factorize(tasks["family"].fillna("(none)"))
    families = [str(f) for f in fam_names]
    raw = _parse_features(tasks["features"])
    feature_names, route, model, model_names = _feature_matrices(
        raw, fam_codes, len(families), families)

    combos = fleet_combos(fleet)
    default_variant = {t.name: t.variant().name for t in fleet.tiers}
    lookup = {(c.tier, c.variant, c.adapter): i for i, c in enumerate(combos)}

    # ------------------------------------------------------------------ attempts
    att = attempts[attempts["task_id"].isin(index)].copy()
    att_task = index.get_indexer(att["task_id"].astype(str))
    variants = att["variant"].astype(object).where(att["variant"].notna(), None)
    variants = [v if v is not None else default_variant.get(str(t))
                for t, v in zip(att["tier"].astype(object), variants)]
    adapters = att["adapter"].astype(object).where(att["adapter"].notna(), None).tolist()
    combo = np.array([lookup.get((str(t), v, a), -1)
                      for t, v, a in zip(att["tier"].astype(object), variants, adapters)],
                     dtype=np.int64)
    unknown = int((combo < 0).sum())
    if unknown:
        notes.append(f"{unknown} attempt(s) on a tier/variant/adapter the fleet lacks were "
                     "left out of the outcome model")
    purpose = att["purpose"].fillna("serve").astype(str).to_numpy()
    passed = att["passed"].to_numpy(dtype=bool, na_value=False)
    number = att["attempt"].to_numpy(dtype=np.int64, na_value=1)
    prop = att["propensity"].to_numpy(dtype=float, na_value=np.nan)
    frame = pd.DataFrame({"task": att_task, "task_id": att["task_id"].astype(str).to_numpy(),
                          "attempt": number, "combo": combo, "passed": passed,
                          "purpose": purpose, "propensity": prop})
    frame = frame[frame["combo"] >= 0].sort_values(["task", "attempt"], kind="stable")

    serve = frame[frame["purpose"] == "serve"]
    pos = serve.groupby("task").cumcount().to_numpy()
    cut = int((pos >= MAX_LOGGED_ATTEMPTS).sum())
    if cut:
        notes.append(f"{cut} serve attempt(s) beyond {MAX_LOGGED_ATTEMPTS} per task were cut")
    keep = pos < MAX_LOGGED_ATTEMPTS
    s_task, s_pos = serve["task"].to_numpy()[keep], pos[keep]
    width = int(s_pos.max()) + 1 if len(s_pos) else 1
    logged_combo = np.full((n, width), -1, dtype=np.int64)
    logged_passed = np.zeros((n, width), dtype=bool)
    logged_combo[s_task, s_pos] = serve["combo"].to_numpy()[keep]
    logged_passed[s_task, s_pos] = serve["passed"].to_numpy()[keep]
    logged_len = np.bincount(s_task, minlength=n).astype(np.int64)
    # A logged trajectory ends at its first pass: later serve attempts would be a bug upstream.
    first_pass = np.where(logged_passed.any(axis=1), logged_passed.argmax(axis=1) + 1, logged_len)
    logged_len = np.minimum(logged_len, first_pass)
    propensity = np.full(n, np.nan)
    first = s_pos == 0
    propensity[s_task[first]] = serve["propensity"].to_numpy()[keep][first]

    # Prior failures per tier rank before each attempt: the outcome model's history features.
    tiers = fleet.tier_names
    ranks = np.array([c.rank for c in combos])
    rank_pos = {r: i for i, r in enumerate(sorted({c.rank for c in combos}))}
    tier_of_combo = np.array([rank_pos[r] for r in ranks])
    hist = np.zeros((len(frame), len(tiers)), dtype=np.float64)
    serve_mask = (frame["purpose"] == "serve").to_numpy()
    f_task = frame["task"].to_numpy()
    f_combo = frame["combo"].to_numpy()
    f_pass = frame["passed"].to_numpy()
    running: dict[int, np.ndarray] = {}
    for row in np.flatnonzero(serve_mask):
        t = f_task[row]
        prior = running.get(t)
        if prior is not None:
            hist[row] = prior
        if not f_pass[row]:
            nxt = (prior.copy() if prior is not None else np.zeros(len(tiers)))
            nxt[tier_of_combo[f_combo[row]]] += 1
            running[t] = nxt
    frame = frame.assign(**{f"hist_{i}": hist[:, i] for i in range(len(tiers))})
    combo_attempts = np.bincount(f_combo, minlength=len(combos))
    joint = _joint_evidence(frame, tier_of_combo, len(tiers))
    state_attempts = _state_attempts(frame, len(tiers), joint)

    # ------------------------------------------------------------------ tokens and prices
    prices = _window_prices(index, fam_codes, families, attempts, calls, fleet, combos,
                            lookup, default_variant, notes)
    # The harness verifies every serve and every shadow attempt: the task's verifier cost
    # spread over both (a shadow's verification is part of what exploration costs).
    verified_mask = serve_mask | (frame["purpose"] == "shadow").to_numpy()
    attempts_per_task = np.maximum(
        np.bincount(f_task[verified_mask], minlength=n), 1).astype(float)

    verifier = tasks["verifier_cost_usd"].to_numpy(dtype=float, na_value=np.nan)
    verifier = np.where(np.isnan(verifier), default_verifier_cost_usd, verifier)
    green = green_pr_mask(tasks)
    vp = tasks["verifier_passed"].to_numpy(dtype=bool, na_value=False)
    accept_rate = float(green.sum() / vp.sum()) if vp.sum() else 1.0

    return Window(
        task_ids=task_ids, families=families, family_code=fam_codes.astype(np.int64),
        feature_names=feature_names, route_features=route, model_features=model,
        model_feature_names=model_names, raw_features=raw, tiers=tiers, combos=combos,
        default_variant=default_variant, input_tokens=prices.input_tokens,
        output_tokens=prices.output_tokens, cached_share=prices.cached_share,
        cost_nocache=prices.cost_nocache, cost_prefix=prices.cost_prefix,
        verifier_per_attempt=verifier / attempts_per_task, logged_combo=logged_combo,
        logged_passed=logged_passed, logged_len=logged_len, propensity=propensity,
        green=green, accept_rate=accept_rate, combo_attempts=combo_attempts,
        state_attempts=state_attempts,
        response_hit_rate=prices.response_hit_rate, attempts_frame=frame, notes=notes,
        joint_frame=joint, calls_per_attempt=prices.calls_per_attempt,
        attempt_cv=prices.attempt_cv, spend_scale=prices.spend_scale,
        share_terms=prices.share_terms, response_influence=prices.response_influence,
        **_shadow_routes(frame, n, propensity))


# ---------------------------------------------------------------------------- prices
# An attempt assumed where the window shows no tokens at all (explicit costs only, no call
# spans): the manifest price ratio between two combinations is read at this size.
NOMINAL_ATTEMPT = {"input_tokens": 1000.0, "output_tokens": 250.0, "calls": 1.0}


@dataclass
class _Prices:
    input_tokens: np.ndarray  # [n] mean input tokens per attempt
    output_tokens: np.ndarray  # [n]
    cached_share: dict[str, float]
    cost_nocache: np.ndarray  # [n, C]
    cost_prefix: np.ndarray  # [n, C]
    response_hit_rate: dict[str, float]
    calls_per_attempt: np.ndarray  # [n]
    attempt_cv: float
    spend_scale: np.ndarray  # [n]
    share_terms: ShareTerms | None = None
    response_influence: dict[str, np.ndarray] = field(default_factory=dict)


def _combo_codes(frame: pd.DataFrame, lookup: dict, default_variant: dict[str, str]
                 ) -> np.ndarray:
    """Combo code of every row of an attempts or calls frame (-1: not in the fleet)."""
    tiers = frame["tier"].astype(object).where(frame["tier"].notna(), None).tolist()
    variants = frame["variant"].astype(object).where(frame["variant"].notna(), None).tolist()
    adapters = (frame["adapter"].astype(object).where(frame["adapter"].notna(), None).tolist()
                if "adapter" in frame.columns else [None] * len(frame))
    return np.array([lookup.get((str(t), v if v is not None else default_variant.get(str(t)),
                                 a), -1)
                     for t, v, a in zip(tiers, variants, adapters)], dtype=np.int64)


def _paired_ratio(observed: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ratio[c, r]: what tasks observed on both c and r paid on c over what they paid on r
    (a ratio of sums), and the number of such tasks."""
    b = observed.astype(np.float64)
    bp = np.where(observed, price, 0.0)
    pairs = b.T @ b
    num, den = bp.T @ b, b.T @ bp
    ratio = np.full(num.shape, np.nan)
    np.divide(num, den, out=ratio, where=(pairs > 0) & (den > 0))
    return ratio, pairs


def _window_prices(index: pd.Index, fam_codes: np.ndarray, families: list[str],
                   attempts: pd.DataFrame, calls: pd.DataFrame, fleet: FleetManifest,
                   combos: list[Combo], lookup: dict, default_variant: dict[str, str],
                   notes: list[str]) -> _Prices:
    """The price of one attempt of every task on every combination (see docs/experiments.md,
    "Prices"). Spans are priced by ``economics.costmodel.price_attempts``, the function the
    metrics read, so the logged trajectory of a task costs here what it cost there:

    - a combination the task was observed on (an attempt on it that carries an explicit cost
      or call spans, of any purpose) costs what those attempts were charged, per attempt;
    - any other combination of a task whose charges are explicit (attempt or call costs) is
      scaled from the task's own most observed combination by the ratio the window shows
      between the two (tasks of its family observed on both, else any task, else the
      manifest's prices of a typical attempt);
    - any other combination of a task priced by tokens costs the manifest price of the
      task's mean tokens, calls and cached share per attempt.

    ``cost_nocache`` and ``cost_prefix`` differ where the prefix-cache lever can change a
    price: an explicit charge is the same in both; an observed call-priced attempt costs its
    tokens at the full input price without the prefix cache and, with it, what it was charged
    where the window saw prefix hits on its tier (else its tokens at that tier's cached
    share). Response-cache hits are valued at their tokens here: the replay applies the
    family's response-hit rate itself.
    """
    from economics.costmodel import price_attempts

    n, n_combos = len(index), len(combos)
    spans = price_attempts(attempts, calls, fleet)
    priced = spans.calls
    a_task = index.get_indexer(attempts["task_id"].astype(str))
    c_task = index.get_indexer(calls["task_id"].astype(str))
    a_combo = _combo_codes(attempts, lookup, default_variant)
    ok = c_task >= 0

    # Cached share of input tokens per tier where prefix caching ran (cached tokens seen):
    # over ALL the tier's calls, misses included, since caching on a tier caches only some of
    # its calls' prefixes (the share over the hits alone over-stated the saving 3x).
    cached_share: dict[str, float] = {}
    call_tier = calls["tier"].astype(object).to_numpy()
    for t in fleet.tier_names:
        on_tier = call_tier == t
        if (on_tier & (priced.cached_input_tokens > 0)).any():
            cached_share[t] = float(priced.cached_input_tokens[on_tier].sum()
                                    / max(priced.input_tokens[on_tier].sum(), 1.0))
    pooled = float(np.mean(list(cached_share.values()))) if cached_share else 0.0
    tier_codes, tier_uniques = pd.factorize(calls["tier"], use_na_sentinel=True)
    names = [str(u) for u in tier_uniques]
    share_of = np.array([cached_share.get(u, pooled) for u in names] + [pooled])[tier_codes]
    saw_prefix = np.array([u in cached_share for u in names] + [False])[tier_codes]

    # Each call without and with the prefix cache (explicit charges stand in both).
    modelled_prefix = (priced.uncached_cost_usd - priced.input_tokens * share_of
                       * (priced.input_price - priced.cached_input_price))
    charged = priced.cost_usd
    call_nocache = np.where(priced.explicit, charged, priced.uncached_cost_usd)
    call_prefix = np.where(priced.explicit | (saw_prefix & ~priced.response_hit), charged,
                           modelled_prefix)
    linked = spans.call_attempt >= 0
    n_att = len(attempts)
    att_nocache = np.bincount(spans.call_attempt[linked], call_nocache[linked], minlength=n_att)
    att_prefix = np.bincount(spans.call_attempt[linked], call_prefix[linked], minlength=n_att)
    att_nocache = np.where(spans.explicit, spans.cost_usd, att_nocache)
    att_prefix = np.where(spans.explicit, spans.cost_usd, att_prefix)

    # Observed cells: (task, combo) with priced attempts.
    use = (a_task >= 0) & (a_combo >= 0) & spans.priced
    cell = a_task[use] * n_combos + a_combo[use]
    size = n * n_combos
    count = np.bincount(cell, minlength=size).reshape(n, n_combos)
    observed = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        obs_nocache = np.bincount(cell, att_nocache[use], minlength=size).reshape(
            n, n_combos) / np.maximum(count, 1)
        obs_prefix = np.bincount(cell, att_prefix[use], minlength=size).reshape(
            n, n_combos) / np.maximum(count, 1)

    # Tokens and calls per priced attempt with calls, for the token model.
    with_calls = use & (spans.n_calls > 0)
    per_task_attempts = np.bincount(a_task[with_calls], minlength=n).astype(float)
    inp = np.bincount(c_task[ok], priced.input_tokens[ok], minlength=n)
    out = np.bincount(c_task[ok], priced.output_tokens[ok], minlength=n)
    n_calls = np.bincount(c_task[ok], minlength=n).astype(float)
    has_calls = n_calls > 0
    denominator = np.maximum(per_task_attempts, 1.0)
    inp, out, calls_per = inp / denominator, out / denominator, n_calls / denominator
    explicit_task = np.zeros(n, dtype=bool)
    explicit_task[a_task[use & spans.explicit]] = True
    explicit_task[c_task[ok & priced.explicit]] = True
    explicit_task &= observed.any(axis=1)
    missing = ~has_calls & ~explicit_task
    if missing.any():
        # Tasks with no calls and no explicit cost: price them at the window's typical usage.
        for arr in (inp, out, calls_per):
            arr[missing] = np.median(arr[has_calls]) if has_calls.any() else 0.0
        notes.append(f"{int(missing.sum())} task(s) without calls or explicit costs priced at "
                     "median tokens")

    discount = fleet.spec.pricing.cached_input_discount
    econ = [fleet.economics(c.tier, c.variant) for c in combos]
    cost_nocache = np.zeros((n, n_combos))
    cost_prefix = np.zeros((n, n_combos))
    for k, (c, e) in enumerate(zip(combos, econ, strict=True)):
        share = cached_share.get(c.tier, pooled)
        p_in, p_out = e.usd_per_input_token, e.usd_per_output_token
        p_cached = e.usd_per_cached_input_token(discount)
        per_call = calls_per * e.usd_per_call
        cost_nocache[:, k] = inp * p_in + out * p_out + per_call
        cost_prefix[:, k] = inp * (p_in - share * (p_in - p_cached)) + out * p_out + per_call

    if explicit_task.any():
        # Scale each explicit task's own charge to the combinations it was not seen on.
        if has_calls.any():
            ref = {"input_tokens": float(inp[has_calls].mean()),
                   "output_tokens": float(out[has_calls].mean()),
                   "calls": float(calls_per[has_calls].mean())}
        else:
            ref = NOMINAL_ATTEMPT
        typical = np.array([e.call_usd(ref["input_tokens"], 0.0, ref["output_tokens"],
                                       cached_input_discount=discount)
                            + (ref["calls"] - 1.0) * e.usd_per_call for e in econ])
        with np.errstate(invalid="ignore", divide="ignore"):
            manifest_ratio = np.where(typical[None, :] > 0,
                                      typical[:, None] / typical[None, :], np.nan)
        window_ratio, window_pairs = _paired_ratio(observed, obs_nocache)
        reference = np.argmax(count, axis=1)
        for f in range(len(families)):
            rows = np.flatnonzero((fam_codes == f) & explicit_task)
            if not len(rows):
                continue
            fam_rows = np.flatnonzero(fam_codes == f)
            ratio, pairs = _paired_ratio(observed[fam_rows], obs_nocache[fam_rows])
            ratio = np.where(pairs > 0, ratio, np.where(window_pairs > 0, window_ratio,
                                                        manifest_ratio))
            r = reference[rows]
            scale = ratio[:, r].T  # [rows, C]: combo c relative to each row's reference
            fill = ~observed[rows] & np.isfinite(scale)
            for target, source in ((cost_nocache, obs_nocache), (cost_prefix, obs_prefix)):
                base = source[rows, r][:, None] * scale
                target[rows] = np.where(fill, base, target[rows])
    cost_nocache = np.where(observed, obs_nocache, cost_nocache)
    cost_prefix = np.where(observed, obs_prefix, cost_prefix)
    share_terms = _share_terms(cached_share, combos, econ, discount, inp, observed,
                               explicit_task, calls, priced, c_task, ok, n)

    response = (calls["cache"] == "response").to_numpy(dtype=bool, na_value=False)
    fam_of_call = np.where(ok, fam_codes[np.maximum(c_task, 0)], -1)
    response_hit_rate, response_influence = {}, {}
    for i, f in enumerate(families):
        m = fam_of_call == i
        if m.any() and response[m].any():
            rate = float(response[m].mean())
            response_hit_rate[f] = rate
            response_influence[f] = (
                np.bincount(c_task[m], response[m].astype(np.float64), minlength=n)
                - rate * np.bincount(c_task[m], minlength=n)) / float(m.sum())
    attempt_cv, spend_scale = _spend_spread(
        a_task[with_calls], spans.n_calls[with_calls],
        np.bincount(spans.call_attempt[linked], priced.input_tokens[linked]
                    + priced.output_tokens[linked], minlength=n_att)[with_calls],
        fam_codes, n, combo=a_combo[with_calls])
    return _Prices(input_tokens=inp, output_tokens=out, cached_share=cached_share,
                   cost_nocache=cost_nocache, cost_prefix=cost_prefix,
                   response_hit_rate=response_hit_rate, response_influence=response_influence,
                   calls_per_attempt=np.maximum(calls_per, 1.0), attempt_cv=attempt_cv,
                   spend_scale=spend_scale, share_terms=share_terms)


def _share_terms(cached_share, combos, econ, discount, inp, observed, explicit_task, calls,
                 priced, c_task, ok, n) -> ShareTerms | None:
    """``ShareTerms`` of a window's prices (``_window_prices``)."""
    if not cached_share:
        return None
    names = [*cached_share, "pooled"]
    param = np.array([names.index(c.tier) if c.tier in cached_share else len(names) - 1
                      for c in combos], dtype=np.int64)
    slope = np.zeros((n, len(combos)))
    for k, (c, e) in enumerate(zip(combos, econ, strict=True)):
        saving = e.usd_per_input_token - e.usd_per_cached_input_token(discount)
        # A cell observed on a tier that cached is its own charge; elsewhere the share
        # prices the task's input tokens.
        moves = ~explicit_task & ~(observed[:, k] & (c.tier in cached_share))
        slope[:, k] = np.where(moves, -inp * saving, 0.0)
    call_tier = calls["tier"].astype(object).to_numpy()
    influence = np.zeros((len(names), n))
    for i, t in enumerate(cached_share):
        on = ok & (call_tier == t)
        total = float(priced.input_tokens[on].sum())
        if total <= 0:
            continue
        own = (np.bincount(c_task[on], priced.cached_input_tokens[on], minlength=n)
               - cached_share[t] * np.bincount(c_task[on], priced.input_tokens[on],
                                               minlength=n))
        influence[i] = own / total
    influence[-1] = influence[:-1].mean(axis=0)  # the pooled share is the tiers' mean
    return ShareTerms(names, param, slope, influence)


# An attempt's spread where the window cannot measure it (no task seen twice).
DEFAULT_ATTEMPT_CV = 0.3


def _spend_spread(task: np.ndarray, n_calls: np.ndarray, tokens: np.ndarray,
                  fam_codes: np.ndarray, n: int, combo: np.ndarray | None = None
                  ) -> tuple[float, np.ndarray]:
    """How an attempt's spend varies, from the attempts with calls (task index, tokens).

    Returns the coefficient of variation of one attempt's tokens around its task's mean
    (pooled within tasks seen on two attempts or more) and, per task, the factor that shrinks
    its observed mean toward its family's mean by the share of the spread between tasks that
    is not one attempt's noise (empirical Bayes). Guardrail caps act on what a task really
    spends: a task seen once on a long attempt will not spend that much on every attempt.

    ``combo``: each attempt's tier x variant. Tiers answer at their own length (a reasoning
    model's attempt is many times a small model's), and the replay already prices each
    attempt on its own tier: that difference is no noise. Each attempt's tokens are first
    divided by its combo's typical ratio to the task's level (log scale, from the tasks seen
    on two combos or more), so only the spread the replay does not model is measured.
    """
    scale = np.ones(n)
    ok = (task >= 0) & (n_calls > 0) & (tokens > 0)
    if ok.sum() < 2:
        return DEFAULT_ATTEMPT_CV, scale
    task, tokens = task[ok], tokens[ok].astype(np.float64)
    if combo is not None:
        tokens = tokens / _combo_levels(task, tokens, combo[ok], n)
    count = np.bincount(task, minlength=n).astype(np.float64)
    mean = np.bincount(task, tokens, minlength=n) / np.maximum(count, 1.0)
    rel = tokens / mean[task] - 1.0
    repeated = count[task] >= 2
    dof = float((count[count >= 2] - 1.0).sum())
    if dof >= 10:
        cv = float(np.sqrt((rel[repeated] ** 2).sum() / dof))
    else:
        cv = DEFAULT_ATTEMPT_CV
    seen = count > 0
    log_mean = np.log(np.where(seen, mean, 1.0))
    for f in np.unique(fam_codes[seen]):
        rows = np.flatnonzero(seen & (fam_codes == f))
        if len(rows) < 5:
            continue
        # On the log scale one attempt's noise is the same for small and large tasks.
        centre = float(np.average(log_mean[rows], weights=count[rows]))
        noise = np.log1p(cv ** 2) / count[rows]
        between = max(float(log_mean[rows].var()) - float(noise.mean()), 0.0)
        keep = between / (between + noise)
        scale[rows] = np.exp((keep - 1.0) * (log_mean[rows] - centre))
    return cv, scale


def _combo_levels(task: np.ndarray, tokens: np.ndarray, combo: np.ndarray, n: int,
                  rounds: int = 3) -> np.ndarray:
    """Per attempt, its combo's multiplicative level (geometric mean 1 over the attempts):
    log tokens = task level + combo level + noise, fitted by a few rounds of alternating
    means. A combo never seen with another on one task keeps level 1."""
    log_t = np.log(tokens)
    c = np.where(combo >= 0, combo, int(combo.max(initial=0)) + 1)
    n_c = int(c.max(initial=0)) + 1
    per_task = np.bincount(task, minlength=n).astype(np.float64)
    per_combo = np.bincount(c, minlength=n_c).astype(np.float64)
    level = np.zeros(n_c)
    for _ in range(rounds):
        task_level = np.bincount(task, log_t - level[c], minlength=n) / np.maximum(per_task, 1)
        level = np.bincount(c, log_t - task_level[task], minlength=n_c) / np.maximum(per_combo,
                                                                                      1)
        level -= np.average(level[c])
    # Only combos that share tasks with others are identified apart from the task levels.
    shared = np.bincount(c, (per_task[task] >= 2).astype(np.float64), minlength=n_c) > 0
    return np.exp(np.where(shared, level, 0.0)[c])


def _shadow_routes(frame: pd.DataFrame, n: int, start_propensity: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Per task, its first shadow (combo, verdict) and the route's propensity: the start's
    (logged on the first serve attempt) times the shadow's odds (logged on the shadow,
    ``policies.routing.shadow_probability``). Shadows logged without odds give NaN: the
    route is then not read (the outcome model still learns from them)."""
    combo = np.full(n, -1, dtype=np.int64)
    passed = np.zeros(n, dtype=bool)
    prop = np.full(n, np.nan)
    shadow = frame[frame["purpose"] == "shadow"].drop_duplicates("task", keep="first")
    if len(shadow):
        t = shadow["task"].to_numpy(dtype=np.int64)
        combo[t] = shadow["combo"].to_numpy(dtype=np.int64)
        passed[t] = shadow["passed"].to_numpy(dtype=bool)
        odds = shadow["propensity"].to_numpy(dtype=float)
        prop[t] = start_propensity[t] * odds
    return {"shadow_combo": combo, "shadow_passed": passed, "shadow_propensity": prop}


JOINT_PURPOSE = "joint"  # purpose of a joint-evidence row (never a span's purpose)


def _joint_evidence(frame: pd.DataFrame, tier_of_combo: np.ndarray, n_tiers: int
                    ) -> pd.DataFrame:
    """Joint-outcome evidence: what one task's attempts on different tiers say together.

    A shadow runs beside a task's first serve attempt, on another tier, on the same task
    (``serving.gateway_core``, ``workload.driver``). Each attempt row of ``frame`` carries
    the failures before it along the serve trajectory (``hist_*``; a shadow: none); read
    together, the shadow and the serve attempts also show one attempt's verdict *after* a
    failure on another tier, which is what a cascade's later step needs:

    - a serve attempt on a task whose shadow on tier Y failed: its verdict after its own
      serve failures and Y's (served on L, shadow on S failed: the step S -> L, observed);
    - a shadow on a task whose serve attempts 1..j failed: its verdict after those failures.

    One row per (attempt, failed partner), with ``hist_*`` = the failures it is read after,
    ``attempt`` = 1 + their number (the attempt a plan reaching that state makes) and
    purpose ``joint``. Each row conditions on one partner chosen before any outcome (a
    shadow is drawn at random, a serve attempt j exists once 1..j-1 failed), so the rows of
    a state are a sample of the tasks that reach it. A shadow verdict has no feedback from
    the attempt beside it, as a harness retry with the same prompt has none.
    """
    hist_cols = [f"hist_{i}" for i in range(n_tiers)]
    purpose = frame["purpose"].to_numpy()
    shadow = frame[purpose == "shadow"]
    serve = frame[purpose == "serve"]
    if shadow.empty or serve.empty:
        return frame.iloc[0:0].copy()
    parts = []
    # Serve verdicts after a failed shadow's tier.
    failed = shadow.loc[~shadow["passed"].to_numpy(dtype=bool), ["task", "combo"]]
    m = serve.merge(failed.rename(columns={"combo": "given"}), on="task")
    if len(m):
        h = m[hist_cols].to_numpy(dtype=np.float64)
        h[np.arange(len(m)), tier_of_combo[m["given"].to_numpy()]] += 1.0
        parts.append((m, h))
    # Shadow verdicts after the serve failures so far (through each failed serve attempt).
    lost = serve[~serve["passed"].to_numpy(dtype=bool)]
    after = lost[hist_cols].to_numpy(dtype=np.float64)
    after[np.arange(len(lost)), tier_of_combo[lost["combo"].to_numpy()]] += 1.0
    through = pd.DataFrame(after, columns=hist_cols).assign(task=lost["task"].to_numpy())
    m = shadow.drop(columns=hist_cols).merge(through, on="task")
    if len(m):
        parts.append((m, m[hist_cols].to_numpy(dtype=np.float64)))
    if not parts:
        return frame.iloc[0:0].copy()
    rows = []
    for m, h in parts:
        rows.append(pd.DataFrame({
            "task": m["task"].to_numpy(), "task_id": m["task_id"].to_numpy(),
            "attempt": (1 + h.sum(axis=1)).astype(np.int64), "combo": m["combo"].to_numpy(),
            "passed": m["passed"].to_numpy(dtype=bool),
            "purpose": np.full(len(m), JOINT_PURPOSE, dtype=object),
            "propensity": np.full(len(m), np.nan),
            **{c: h[:, i] for i, c in enumerate(hist_cols)}}))
    return pd.concat(rows, ignore_index=True)[list(frame.columns)]


def _state_attempts(frame: pd.DataFrame, n_tiers: int, joint: pd.DataFrame | None = None
                    ) -> dict[tuple[int, tuple[int, ...]], int]:
    """Observations per (combo, failures so far on each tier): what a plan step needs to be
    supported. A cascade that never retries a tier says nothing of a retry's odds; a shadow
    read beside a failed serve attempt (``_joint_evidence``) says what the next step did."""
    cols = ["combo", *[f"hist_{i}" for i in range(n_tiers)]]
    if joint is not None and len(joint):
        frame = pd.concat([frame[cols], joint[cols]], ignore_index=True)
    if frame.empty:
        return {}
    counts = frame[cols].astype(np.int64).value_counts()
    return {(int(k[0]), tuple(int(x) for x in k[1:])): int(v) for k, v in counts.items()}


def load_estimator_window(telemetry_dir: str | Path, since: str | None = None,
                          until: str | None = None, *, fleet: FleetManifest | None = None,
                          default_verifier_cost_usd: float = 0.0
                          ) -> Window | tuple[pd.DataFrame, ...]:
    """Read tasks, attempts and calls of ``[since, until]`` from an ingested telemetry root.

    With ``fleet`` the compiled ``Window``; without it the three DataFrames.
    """
    from telemetry.warehouse import read_table

    frames = tuple(read_table(telemetry_dir, t, start_day=since, end_day=until)
                   for t in ("tasks", "attempts", "calls"))
    if fleet is None:
        return frames
    return build_window(*frames, fleet, default_verifier_cost_usd=default_verifier_cost_usd)


def as_window(window: Window | Sequence[pd.DataFrame], fleet: FleetManifest) -> Window:
    """Accept a compiled window or the (tasks, attempts, calls) frames."""
    if isinstance(window, Window):
        return window
    tasks, attempts, calls = window
    return build_window(tasks, attempts, calls, fleet)
