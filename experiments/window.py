"""A telemetry window compiled once into numpy arrays the replay reads many times.

``Window`` holds, per task: its family, its features (as ``policies.routing`` reads them),
its token usage per attempt, the serve trajectory the logging policy actually took (tiers,
variants, adapters, verdicts, the first attempt's propensity) and its observed Green PR;
per fleet combination (tier, variant, adapter) the price of one attempt of each task with
and without prefix caching. Building it is the only pandas work; everything after is
vectorised numpy.
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
    state_attempts: dict[tuple[int, tuple[int, ...]], int]  # (combo, failures per tier) seen
    response_hit_rate: dict[str, float]  # family -> share of calls served by response cache
    attempts_frame: pd.DataFrame  # attempt rows for the outcome model (see _attempt_rows)
    notes: list[str] = field(default_factory=list)

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
            state_attempts=_state_attempts(frame, len(self.tiers)),
            response_hit_rate=self.response_hit_rate, attempts_frame=frame,
            notes=list(self.notes))


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
    from economics.costmodel import green_pr_mask, price_calls

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
    state_attempts = _state_attempts(frame, len(tiers))

    # ------------------------------------------------------------------ tokens and prices
    priced = price_calls(calls, fleet)
    call_tid = calls["task_id"].astype(str)
    c_task = index.get_indexer(call_tid)
    ok = c_task >= 0
    attempts_per_task = np.maximum(
        np.bincount(f_task[serve_mask], minlength=n), 1).astype(float)
    inp = np.bincount(c_task[ok], priced.input_tokens[ok], minlength=n) / attempts_per_task
    out = np.bincount(c_task[ok], priced.output_tokens[ok], minlength=n) / attempts_per_task
    has_calls = np.bincount(c_task[ok], minlength=n) > 0
    if (~has_calls).any():
        # Tasks whose calls are missing: price them at the window's typical usage.
        inp[~has_calls] = np.median(inp[has_calls]) if has_calls.any() else 0.0
        out[~has_calls] = np.median(out[has_calls]) if has_calls.any() else 0.0
        notes.append(f"{int((~has_calls).sum())} task(s) without calls priced at median tokens")
    cached_share: dict[str, float] = {}
    call_tier = calls["tier"].astype(object).to_numpy()
    for t in tiers:
        m = (call_tier == t) & (priced.cached_input_tokens > 0)
        if m.any():
            allm = call_tier == t
            cached_share[t] = float(priced.cached_input_tokens[m].sum() / max(
                priced.input_tokens[m].sum(), 1.0))
            del allm
    pooled = (float(np.mean(list(cached_share.values()))) if cached_share else 0.0)
    discount = fleet.spec.pricing.cached_input_discount
    cost_nocache = np.zeros((n, len(combos)))
    cost_prefix = np.zeros((n, len(combos)))
    for k, c in enumerate(combos):
        e = fleet.economics(c.tier, c.variant)
        share = cached_share.get(c.tier, pooled)
        cost_nocache[:, k] = inp * e.usd_per_input_token + out * e.usd_per_output_token
        cost_prefix[:, k] = (inp * e.usd_per_input_token * (1 - share * discount)
                             + out * e.usd_per_output_token)
    response = (calls["cache"] == "response").to_numpy(dtype=bool, na_value=False)
    fam_of_call = np.where(ok, fam_codes[np.maximum(c_task, 0)], -1)
    response_hit_rate = {}
    for i, f in enumerate(families):
        m = fam_of_call == i
        if m.any() and response[m].any():
            response_hit_rate[f] = float(response[m].mean())

    verifier = tasks["verifier_cost_usd"].to_numpy(dtype=float, na_value=np.nan)
    verifier = np.where(np.isnan(verifier), default_verifier_cost_usd, verifier)
    green = green_pr_mask(tasks)
    vp = tasks["verifier_passed"].to_numpy(dtype=bool, na_value=False)
    accept_rate = float(green.sum() / vp.sum()) if vp.sum() else 1.0

    return Window(
        task_ids=task_ids, families=families, family_code=fam_codes.astype(np.int64),
        feature_names=feature_names, route_features=route, model_features=model,
        model_feature_names=model_names, raw_features=raw, tiers=tiers, combos=combos,
        default_variant=default_variant, input_tokens=inp, output_tokens=out,
        cached_share=cached_share, cost_nocache=cost_nocache, cost_prefix=cost_prefix,
        verifier_per_attempt=verifier / attempts_per_task, logged_combo=logged_combo,
        logged_passed=logged_passed, logged_len=logged_len, propensity=propensity,
        green=green, accept_rate=accept_rate, combo_attempts=combo_attempts,
        state_attempts=state_attempts,
        response_hit_rate=response_hit_rate, attempts_frame=frame, notes=notes)


def _state_attempts(frame: pd.DataFrame, n_tiers: int) -> dict[tuple[int, tuple[int, ...]], int]:
    """Attempts seen per (combo, failures so far on each tier): what a plan step needs to be
    supported. A cascade that never retries a tier says nothing of a retry's odds."""
    cols = ["combo", *[f"hist_{i}" for i in range(n_tiers)]]
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
