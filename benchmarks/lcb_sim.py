"""LiveCodeBench as a routing testbed (shared by bench_routing_lcb.py and tests of the bench).

Per-problem pass@1 of a ladder of models is read as each tier's per-attempt success
probability on that problem. Two ladders:

- ``dscoder3``: DeepSeek-Coder 1.3b / 6.7b / 33b instruct (LiveCodeBench 2024-04-17),
  self-hosted, priced by the project's cost model from model size (``ladder_fleet``).
- ``api6``: six models of very different price from the 2025-01-15 release, priced per
  token at their public list prices (API-priced tiers of the fleet manifest).

Logged telemetry is simulated with a real policy applied through ``policies.routing``
(partial feedback: only the tiers tried are seen; shadow attempts on other tiers as the
gateway runs them). The true value of any policy on held-out problems is computed exactly
from the full per-problem table, again through ``policies.routing`` and the guardrail
semantics of ``policies``, with no use of the estimator.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DIFFICULTY = {"easy": 1, "medium": 2, "hard": 3}
# LiveCodeBench has no token counts: a typical competitive-programming prompt and answer.
INPUT_TOKENS, OUTPUT_TOKENS = 600, 400
VERIFIER_USD = 0.00002  # one sandboxed test run: ~2 CPU-seconds at $0.04 per CPU-hour
USD_PER_GPU_HOUR = 2.5


@dataclass(frozen=True)
class TierModel:
    tier: str
    model: str  # the LiveCodeBench model name
    size_b: float | None = None  # self-hosted: parameters, priced by GPU economics
    # API: list price in $ per million input and output tokens
    api_usd_per_mtok: tuple[float, float] | None = None
    output_tokens: int = OUTPUT_TOKENS  # reasoning models write many more tokens

    @property
    def label(self) -> str:
        return f"{self.model} ({self.size_b}B)" if self.size_b else self.model


@dataclass(frozen=True)
class Ladder:
    name: str
    release: str
    tiers: tuple[TierModel, ...]

    @property
    def names(self) -> list[str]:
        return [t.tier for t in self.tiers]

    def tier(self, name: str) -> TierModel:
        return next(t for t in self.tiers if t.tier == name)


DSCODER3 = Ladder("dscoder3", "20240417", (
    TierModel("S", "DSCoder-1.3b-Ins", size_b=1.3),
    TierModel("M", "DSCoder-6.7b-Ins", size_b=6.7),
    TierModel("L", "DSCoder-33b-Ins", size_b=33.0)))

# Public list prices ($ per million input / output tokens) at the models' releases; the two
# o1 models also write hidden reasoning tokens, billed as output (assumed 8x and 20x a
# plain answer: LiveCodeBench publishes no token counts).
API6 = Ladder("api6", "20250115", (
    TierModel("T1", "Gemini-Flash-1.5-002", api_usd_per_mtok=(0.075, 0.30)),
    TierModel("T2", "GPT-4O-mini-2024-07-18", api_usd_per_mtok=(0.15, 0.60)),
    TierModel("T3", "DeepSeek-V3", api_usd_per_mtok=(0.27, 1.10)),
    TierModel("T4", "GPT-4O-2024-08-06", api_usd_per_mtok=(2.50, 10.0)),
    TierModel("T5", "O1-Mini-2024-09-12 (N=1)", api_usd_per_mtok=(3.0, 12.0),
              output_tokens=8 * OUTPUT_TOKENS),
    TierModel("T6", "O1-2024-12-17 (N=1) (High)", api_usd_per_mtok=(15.0, 60.0),
              output_tokens=20 * OUTPUT_TOKENS)))

LADDERS = {ladder.name: ladder for ladder in (DSCODER3, API6)}
LADDER = tuple((t.tier, t.model, t.size_b) for t in DSCODER3.tiers)  # the first bench's


def _economics(t: TierModel) -> dict:
    if t.api_usd_per_mtok is not None:
        inp, out = t.api_usd_per_mtok
        return {"usd_per_1m_input_tokens": inp, "usd_per_1m_output_tokens": out}
    gpus = max(1, math.ceil(t.size_b * 2 * 1.6 / 80))
    rate = 40_000.0 / t.size_b * gpus
    return {"gpus": gpus, "usd_per_gpu_hour": USD_PER_GPU_HOUR,
            "prefill_tokens_per_s": rate * 4, "decode_tokens_per_s": rate}


def ladder_fleet(ladder: Ladder = DSCODER3):
    """The ladder as a fleet manifest. Self-hosted tiers: bf16 weights need 2 bytes/param
    on 80 GB GPUs (33b takes 2 for KV room), and a replica's effective throughput falls with
    parameters (memory-bandwidth-bound decode): 40,000 / params_b tokens/s per GPU. API
    tiers: their list prices, no weights."""
    from contracts.manifest import load_fleet

    tiers = []
    for rank, t in enumerate(ladder.tiers):
        variant = {"name": "bf16", "economics": _economics(t)}
        if t.size_b:
            variant["weights"] = t.model
        tiers.append({"name": t.tier, "rank": rank, "model": t.model, "stands_in_for": t.label,
                      "variants": [variant]})
    return load_fleet(json.dumps({"apiVersion": "autopilot/v1", "kind": "FleetManifest",
                                  "metadata": {"name": f"lcb-{ladder.name}"},
                                  "spec": {"tiers": tiers}}))


def load_problems(data_dir: str | Path, ladder: Ladder = DSCODER3) -> pd.DataFrame:
    """One row per problem: platform, difficulty, and p_<tier> (pass@1 / 100)."""
    path = Path(data_dir) / "livecodebench" / f"per_problem_pass1_{ladder.release}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data pointing at the shared data")
    d = pd.read_csv(path)
    d = d[d["model"].isin([t.model for t in ladder.tiers])]
    wide = d.pivot_table(index=["question_id", "platform", "difficulty"], columns="model",
                         values="pass_at_1_pct").reset_index()
    for t in ladder.tiers:
        wide[f"p_{t.tier}"] = wide[t.model] / 100.0
    wide = wide.dropna(subset=[f"p_{t.tier}" for t in ladder.tiers])
    return wide[["question_id", "platform", "difficulty"]
                + [f"p_{t.tier}" for t in ladder.tiers]].reset_index(drop=True)


def features_of(row) -> dict:
    return {"difficulty": DIFFICULTY[row["difficulty"]],
            "leetcode": int(row["platform"] == "leetcode"),
            "atcoder": int(row["platform"] == "atcoder")}


def tokens_of(ladder: Ladder, tier: str) -> tuple[int, int]:
    return INPUT_TOKENS, ladder.tier(tier).output_tokens


def attempt_cost(fleet, tier: str, ladder: Ladder = DSCODER3) -> float:
    """$ of one attempt on ``tier``, at the manifest's per-token prices."""
    e = fleet.economics(tier)
    inp, out = tokens_of(ladder, tier)
    return inp * e.usd_per_input_token + out * e.usd_per_output_token


def simulate_log(policy, fleet, problems: pd.DataFrame, repeats: int, seed: int,
                 ladder: Ladder = DSCODER3):
    """(tasks, attempts, calls) frames of ``repeats`` tasks per problem under ``policy``:
    serve attempts along the plan until one passes (or a cap refuses), and the shadow copy
    of the first attempt the gateway runs at ``shadow_rate`` (purpose ``shadow``, attempt 1,
    its own verdict on the same problem). Every attempt carries its explicit cost (as a
    gateway in front of priced APIs logs it); calls are logged for the serve attempts."""
    from policies.routing import (
        attempt_tier_probabilities,
        choose_start,
        resolve_routing,
        shadow_probability,
        shadow_tier,
        tier_plan,
    )

    rng = np.random.default_rng(seed)
    tasks, attempts, calls = [], [], []
    n = 0
    for _ in range(repeats):
        for _, row in problems.iterrows():
            feats = features_of(row)
            family = row["platform"]  # the task family: the contest platform
            tid = f"lcb-{seed}-{n:06d}"
            n += 1
            start, _ = choose_start(policy, family, feats, rng.random(), rng.random())
            probs = attempt_tier_probabilities(policy, family, feats)
            plan = tier_plan(policy, family, feats, start=start)
            shadow = shadow_tier(policy, family, plan[0].tier, rng.random(), rng.random())
            passed = False
            spent = 0.0
            used = 0
            j = 0
            for j, step in enumerate(plan, start=1):
                if _refused(policy, j, spent, used):
                    break
                tier = step.tier
                inp, out, clipped = _clipped_tokens(policy, ladder, tier, used)
                draw = rng.random()
                passed = not clipped and bool(draw < row[f"p_{tier}"])
                price = tokens_cost(fleet, tier, inp, out)
                attempts.append((tid, j, tier, "bf16", passed, "serve", probs[j - 1][tier],
                                 price))
                calls.append((tid, j, tier, "bf16", inp, out))
                if j == 1 and shadow is not None:
                    # The shadow's verdict on the same problem; its cost is logged on the
                    # attempt (as a gateway in front of priced APIs knows it).
                    s_passed = bool(rng.random() < row[f"p_{shadow}"])
                    odds = shadow_probability(resolve_routing(policy, family), tier, shadow)
                    attempts.append((tid, 1, shadow, "bf16", s_passed, "shadow", odds,
                                     attempt_cost(fleet, shadow, ladder)))
                spent += price
                used += inp + out
                if passed:
                    break
            tasks.append((tid, family, row["question_id"], "green" if passed else "failed",
                          passed, VERIFIER_USD * max(j, 1), json.dumps(feats)))
    t = pd.DataFrame(tasks, columns=["task_id", "family", "repo", "outcome", "verifier_passed",
                                     "verifier_cost_usd", "features"])
    t["review_accepted"] = pd.array([pd.NA] * len(t), dtype="boolean")
    t["day"] = "2026-11-20"
    a = pd.DataFrame(attempts, columns=["task_id", "attempt", "tier", "variant", "passed",
                                        "purpose", "propensity", "cost_usd"])
    a["adapter"] = pd.array([pd.NA] * len(a), dtype="string")
    c = pd.DataFrame(calls, columns=["task_id", "attempt", "tier", "variant", "input_tokens",
                                     "output_tokens"])
    c["cached_input_tokens"] = 0
    c["cache"] = "miss"
    c["cost_usd"] = np.nan
    c["parent_span_id"] = pd.array([pd.NA] * len(c), dtype="string")
    return t, a, c


def tokens_cost(fleet, tier: str, input_tokens: int, output_tokens: int) -> float:
    e = fleet.economics(tier)
    return input_tokens * e.usd_per_input_token + output_tokens * e.usd_per_output_token


def _clipped_tokens(policy, ladder: Ladder, tier: str, used_tokens: int
                    ) -> tuple[int, int, bool]:
    """(input, output tokens, clipped) of an attempt on ``tier`` after ``used_tokens``: the
    gateway clips the call's output to the task's remaining token cap
    (``policies.caps.max_tokens_left``); a clipped answer is cut short and fails."""
    from policies.caps import max_tokens_left

    inp, out = tokens_of(ladder, tier)
    left = max_tokens_left(policy.spec.guardrails, used_tokens, out)
    return inp, min(out, left), left < out


def _refused(policy, attempt: int, spent_usd: float, used_tokens: int) -> bool:
    """The gateway's guardrail rule for a task's next attempt (``policies.caps``)."""
    from policies.caps import task_refusal

    return task_refusal(policy.spec.guardrails, attempt=attempt, spent_usd=spent_usd,
                        spent_tokens=used_tokens) is not None


@dataclass(frozen=True)
class TrueValue:
    green_rate: float
    fpy: float
    cost_per_task: float

    @property
    def cost_per_green(self) -> float:
        return self.cost_per_task / self.green_rate if self.green_rate > 0 else float("inf")


def exact_value(policy, fleet, problems: pd.DataFrame, ladder: Ladder = DSCODER3,
                *, shadow: bool = True) -> TrueValue:
    """The policy's exact expected value per task on these problems (full information),
    vectorised over the problems that share a family and features. Shadow copies (eval
    spend) are counted when ``shadow``."""
    from policies.routing import (
        first_tier_probabilities,
        resolve_routing,
        shadow_targets,
        shadow_tier,
        tier_plan,
    )

    price = {t: attempt_cost(fleet, t, ladder) for t in ladder.names}
    green = fpy = cost = 0.0
    keys = problems.apply(lambda r: (r["platform"], r["difficulty"]), axis=1)
    for (family, difficulty), rows in problems.groupby(keys.to_numpy(), sort=False):
        feats = features_of(rows.iloc[0])
        p = {t: rows[f"p_{t}"].to_numpy() for t in ladder.names}
        routing = resolve_routing(policy, family)
        for start, p_start in first_tier_probabilities(policy, family, feats).items():
            if p_start == 0:
                continue
            plan = tier_plan(policy, family, feats, start=start)
            reach = np.ones(len(rows))
            spent, used = 0.0, 0
            for j, step in enumerate(plan, start=1):
                if _refused(policy, j, spent, used):
                    break
                inp, out, clipped = _clipped_tokens(policy, ladder, step.tier, used)
                paid = tokens_cost(fleet, step.tier, inp, out)
                p_pass = 0.0 * p[step.tier] if clipped else p[step.tier]
                cost += p_start * float((reach * (paid + VERIFIER_USD)).sum())
                green += p_start * float((reach * p_pass).sum())
                if j == 1:
                    fpy += p_start * float(p_pass.sum())
                spent += paid
                used += inp + out
                reach = reach * (1.0 - p_pass)
            if shadow and routing.shadow_rate > 0:
                first = plan[0].tier
                others = shadow_targets(routing, first)  # shadow_tiers when named
                for m in range(len(others)):
                    tier = shadow_tier(policy, family, first, 0.0, (m + 0.5) / len(others))
                    if tier is not None:
                        cost += (p_start * routing.shadow_rate / len(others) * price[tier]
                                 * len(rows))
    n = len(problems)
    return TrueValue(green / n, fpy / n, cost / n)


def oracle_value(fleet, problems: pd.DataFrame, draws: int = 200, seed: int = 0,
                 ladder: Ladder = DSCODER3) -> TrueValue:
    """The cheapest tier that passes each problem (one draw per tier); none: the cheapest
    tier's attempt is paid (RouterBench's convention). Averaged over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    tiers = sorted(ladder.names, key=lambda t: attempt_cost(fleet, t, ladder))
    costs = np.array([attempt_cost(fleet, t, ladder) + VERIFIER_USD for t in tiers])
    p = problems[[f"p_{t}" for t in tiers]].to_numpy()
    passed = rng.random((draws, *p.shape)) < p[None]
    any_pass = passed.any(axis=2)
    first = passed.argmax(axis=2)
    cost = np.where(any_pass, costs[first], costs[0])
    return TrueValue(float(any_pass.mean()), float(any_pass.mean()), float(cost.mean()))


def static_policy(escalation, max_attempts: int | None = None, *, families=None,
                  shadow_rate: float = 0.0, explore: float = 0.0):
    """A fixed-order policy (optionally per-family orders): the static policies the
    full-information search enumerates."""
    from policies.policy import Policy

    routing = {"router": "fixed", "escalation": list(escalation),
               "max_attempts": max_attempts or len(escalation),
               "shadow_rate": shadow_rate, "exploration_rate": explore}
    if families:
        routing["families"] = {f: {"escalation": list(e), "thresholds": [],
                                   "max_attempts": len(e)} for f, e in families.items()}
    return Policy.model_validate({
        "metadata": {"version": 1, "author": "bench", "created": "2026-11-01T00:00:00Z"},
        "spec": {"routing": routing}})


def best_static_policy(fleet, problems: pd.DataFrame, ladder: Ladder, *, min_green: float):
    """The best static policy with full information on ``problems``: every cheap-to-
    expensive escalation order (each tier once), then per-family orders by coordinate
    descent, minimising cost per Green PR with the Green rate at least ``min_green``."""
    from itertools import combinations

    names = ladder.names
    orders = [list(c) for k in range(1, len(names) + 1) for c in combinations(names, k)]

    def score(policy) -> tuple[float, TrueValue]:
        v = exact_value(policy, fleet, problems, ladder, shadow=False)
        return (v.cost_per_green if v.green_rate >= min_green - 1e-12 else math.inf), v

    best = min(((score(static_policy(o))[0], o) for o in orders), key=lambda x: x[0])
    current: dict[str, list[str]] = {}
    global_order = best[1]
    families = sorted(problems["platform"].unique())
    best_value = best[0]
    for _ in range(3):
        improved = False
        for fam in families:
            for o in orders:
                trial = {**current, fam: o}
                s, _ = score(static_policy(global_order, families=trial))
                if s < best_value - 1e-15:
                    best_value, current, improved = s, trial, True
        if not improved:
            break
    policy = static_policy(global_order, families=current or None)
    return policy, score(policy)[1]
