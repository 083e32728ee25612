"""LiveCodeBench as a routing testbed (shared by bench_routing_lcb.py and tests of the bench).

Per-problem pass@1 of a size ladder (DeepSeek-Coder 1.3b / 6.7b / 33b instruct, the
LiveCodeBench 2024-04-17 release) is read as each tier's per-attempt success probability
on that problem. Tiers are priced by the project's cost model from model size (see
``ladder_fleet``). Logged telemetry is simulated with a real policy applied through
``policies.routing`` (partial feedback: only the tiers tried are seen). The true value of
any policy on held-out problems is computed exactly from the full per-problem table,
again through ``policies.routing``, with no use of the estimator.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LADDER = (("S", "DSCoder-1.3b-Ins", 1.3), ("M", "DSCoder-6.7b-Ins", 6.7),
          ("L", "DSCoder-33b-Ins", 33.0))
DIFFICULTY = {"easy": 1, "medium": 2, "hard": 3}
# LiveCodeBench has no token counts: a typical competitive-programming prompt and answer.
INPUT_TOKENS, OUTPUT_TOKENS = 600, 400
VERIFIER_USD = 0.00002  # one sandboxed test run: ~2 CPU-seconds at $0.04 per CPU-hour
USD_PER_GPU_HOUR = 2.5


def ladder_fleet():
    """Price each tier from its size: bf16 weights need 2 bytes/param on 80 GB GPUs (33b
    takes 2 for KV room), and a replica's effective throughput falls with parameters
    (memory-bandwidth-bound decode): 40,000 / params_b tokens/s per GPU."""
    from contracts.manifest import load_fleet

    tiers = []
    for rank, (name, model, size) in enumerate(LADDER):
        gpus = max(1, math.ceil(size * 2 * 1.6 / 80))
        rate = 40_000.0 / size * gpus
        tiers.append({"name": name, "rank": rank, "model": model,
                      "stands_in_for": f"{model} ({size}B)",
                      "variants": [{"name": "bf16", "weights": model, "economics": {
                          "gpus": gpus, "usd_per_gpu_hour": USD_PER_GPU_HOUR,
                          "prefill_tokens_per_s": rate * 4, "decode_tokens_per_s": rate}}]})
    return load_fleet(json.dumps({"apiVersion": "autopilot/v1", "kind": "FleetManifest",
                                  "metadata": {"name": "lcb-ladder"},
                                  "spec": {"tiers": tiers}}))


def load_problems(data_dir: str | Path) -> pd.DataFrame:
    """One row per problem: platform, difficulty, and p_S, p_M, p_L (pass@1 / 100)."""
    path = Path(data_dir) / "livecodebench" / "per_problem_pass1_20240417.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data pointing at the shared data")
    d = pd.read_csv(path)
    models = {model: tier for tier, model, _ in LADDER}
    d = d[d["model"].isin(models)]
    wide = d.pivot_table(index=["question_id", "platform", "difficulty"], columns="model",
                         values="pass_at_1_pct").reset_index()
    for tier, model, _ in LADDER:
        wide[f"p_{tier}"] = wide[model] / 100.0
    return wide[["question_id", "platform", "difficulty"]
                + [f"p_{t}" for t, _, _ in LADDER]].reset_index(drop=True)


def features_of(row) -> dict:
    return {"difficulty": DIFFICULTY[row["difficulty"]],
            "leetcode": int(row["platform"] == "leetcode"),
            "atcoder": int(row["platform"] == "atcoder")}


def attempt_cost(fleet, tier: str) -> float:
    e = fleet.economics(tier)
    return INPUT_TOKENS * e.usd_per_input_token + OUTPUT_TOKENS * e.usd_per_output_token


def simulate_log(policy, fleet, problems: pd.DataFrame, repeats: int, seed: int):
    """(tasks, attempts, calls) frames of ``repeats`` tasks per problem under ``policy``."""
    from policies.routing import (
        attempt_tier_probabilities,
        attempt_tiers,
        choose_start,
        resolve_routing,
    )

    rng = np.random.default_rng(seed)
    tasks, attempts, calls = [], [], []
    n = 0
    for _ in range(repeats):
        for _, row in problems.iterrows():
            feats = features_of(row)
            family = row["platform"]  # the task family: the contest platform
            routing = resolve_routing(policy, family)
            tid = f"lcb-{seed}-{n:06d}"
            n += 1
            start, _ = choose_start(policy, family, feats, rng.random(), rng.random())
            probs = attempt_tier_probabilities(policy, family, feats)
            passed = False
            for j, tier in enumerate(attempt_tiers(routing, start), start=1):
                passed = bool(rng.random() < row[f"p_{tier}"])
                attempts.append((tid, j, tier, "bf16", passed, "serve", probs[j - 1][tier]))
                calls.append((tid, j, tier, "bf16", INPUT_TOKENS, OUTPUT_TOKENS))
                if passed:
                    break
            tasks.append((tid, family, row["question_id"], "green" if passed else "failed",
                          passed, VERIFIER_USD * j, json.dumps(feats)))
    t = pd.DataFrame(tasks, columns=["task_id", "family", "repo", "outcome", "verifier_passed",
                                     "verifier_cost_usd", "features"])
    t["review_accepted"] = pd.array([pd.NA] * len(t), dtype="boolean")
    t["day"] = "2026-11-20"
    a = pd.DataFrame(attempts, columns=["task_id", "attempt", "tier", "variant", "passed",
                                        "purpose", "propensity"])
    a["adapter"] = pd.array([pd.NA] * len(a), dtype="string")
    c = pd.DataFrame(calls, columns=["task_id", "attempt", "tier", "variant", "input_tokens",
                                     "output_tokens"])
    c["cached_input_tokens"] = 0
    c["cache"] = "miss"
    c["cost_usd"] = np.nan
    c["parent_span_id"] = pd.array([pd.NA] * len(c), dtype="string")
    return t, a, c


@dataclass(frozen=True)
class TrueValue:
    green_rate: float
    fpy: float
    cost_per_task: float

    @property
    def cost_per_green(self) -> float:
        return self.cost_per_task / self.green_rate if self.green_rate > 0 else float("inf")


def exact_value(policy, fleet, problems: pd.DataFrame) -> TrueValue:
    """The policy's exact expected value per task on these problems (full information)."""
    from policies.routing import first_tier_probabilities, tier_plan

    g = policy.spec.guardrails
    green = fpy = cost = 0.0
    for _, row in problems.iterrows():
        feats = features_of(row)
        family = row["platform"]
        for start, p_start in first_tier_probabilities(policy, family, feats).items():
            if p_start == 0:
                continue
            reach, spent = 1.0, 0.0
            for j, a in enumerate(tier_plan(policy, family, feats, start=start)):
                c = attempt_cost(fleet, a.tier)
                if g.max_usd_per_task is not None and spent + c > g.max_usd_per_task:
                    break
                if g.max_tokens_per_task is not None and (
                        (j + 1) * (INPUT_TOKENS + OUTPUT_TOKENS) > g.max_tokens_per_task):
                    break
                p = row[f"p_{a.tier}"]
                cost += p_start * reach * (c + VERIFIER_USD)
                green += p_start * reach * p
                if j == 0:
                    fpy += p_start * p
                spent += c
                reach *= 1.0 - p
    n = len(problems)
    return TrueValue(green / n, fpy / n, cost / n)


def oracle_value(fleet, problems: pd.DataFrame, draws: int = 200, seed: int = 0) -> TrueValue:
    """The cheapest tier that passes each problem (one draw per tier); none: the cheapest
    tier's attempt is paid (RouterBench's convention). Averaged over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    tiers = [t for t, _, _ in LADDER]
    costs = np.array([attempt_cost(fleet, t) + VERIFIER_USD for t in tiers])
    p = problems[[f"p_{t}" for t in tiers]].to_numpy()
    passed = rng.random((draws, *p.shape)) < p[None]
    any_pass = passed.any(axis=2)
    first = passed.argmax(axis=2)
    cost = np.where(any_pass, costs[first], costs[0])
    return TrueValue(float(any_pass.mean()), float(any_pass.mean()), float(cost.mean()))
