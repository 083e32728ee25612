"""Measure what a distilled adapter changes for its family, on the real models.

``measure_family_cascade`` plays held-out tasks of one family through each policy exactly
as the gateway routes them (``policies.routing.tier_plan``, no exploration), with every
attempt's output decoded greedily by the real tier (and adapter) through transformers
(``training.decode.greedy_decode``, the ladder's stop rule) and checked by the family's
verifier. Decoding is deterministic, so each (tier, variant, adapter) answers a prompt once
and every policy reuses that answer. Every attempt is priced from the fleet manifest with its
measured token counts, plus the verifier's cost.

The result per policy: Green PRs, FPY, spend by tier, the top tier's share of spend and
cost per Green PR: the figures docs/distillation.md reports. (The gateway path decodes the
same weights with vLLM in bf16; this path uses float32, so an answer can differ in rare
near-ties.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.decode import greedy_decode, load_model

__all__ = ["measure_family_cascade"]


def _decode(manifest_path: Path, fleet: Any, tier: str, variant: str, adapter: str | None,
            prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[int], list[int]]:
    from serving.engine import verify_variant

    pinned = verify_variant(fleet, manifest_path.parent, tier, variant)
    model, tokenizer = load_model(pinned.model_dir,
                                  None if adapter is None else pinned.adapter_dirs[adapter])
    decoded = greedy_decode(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return ([d.text for d in decoded], [d.prompt_tokens for d in decoded],
            [d.output_tokens for d in decoded])


def measure_family_cascade(manifest_path: str | Path, family: str, policies: Mapping[str, Any],
                           tasks: Sequence[Any], *, verifier_cost_usd: float = 0.0005,
                           max_new_tokens: int = 32) -> dict[str, Any]:
    """Per policy label: the family's measured cascade on ``tasks`` (see module docstring)."""
    import torch

    from contracts.manifest import load_fleet
    from policies.routing import tier_plan
    from workload.tasks import verify

    torch.set_num_threads(2)
    manifest_path = Path(manifest_path)
    fleet = load_fleet(manifest_path)
    plans = {label: [tier_plan(p, family, t.features) for t in tasks]
             for label, p in policies.items()}
    combos = sorted({(a.tier, fleet.tier(a.tier).variant(a.variant).name, a.adapter)
                     for plan_list in plans.values() for plan in plan_list for a in plan},
                    key=lambda c: (c[0], c[1], c[2] or ""))
    prompts = [t.prompt for t in tasks]
    answers: dict[tuple[str, str, str | None], tuple[list[bool], list[int], list[int]]] = {}
    for tier, variant, adapter in combos:
        texts, n_in, n_out = _decode(manifest_path, fleet, tier, variant, adapter, prompts,
                                     max_new_tokens)
        ok = [verify(t, x).passed for t, x in zip(tasks, texts, strict=True)]
        answers[(tier, variant, adapter)] = (ok, n_in, n_out)
    pass_rates = {f"{t}/{v}" + (f"+{a}" if a else ""): sum(ok) / len(ok)
                  for (t, v, a), (ok, _, _) in answers.items() if ok}
    top = fleet.tiers[-1].name
    out: dict[str, Any] = {"family": family, "tasks": len(tasks), "pass_rates": pass_rates,
                           "policies": {}}
    for label, plan_list in plans.items():
        spend_by_tier: dict[str, float] = {}
        green = first = attempts = 0
        verifier = 0.0
        for k, plan in enumerate(plan_list):
            for j, step in enumerate(plan):
                variant = fleet.tier(step.tier).variant(step.variant).name
                ok, n_in, n_out = answers[(step.tier, variant, step.adapter)]
                e = fleet.economics(step.tier, variant)
                cost = n_in[k] * e.usd_per_input_token + n_out[k] * e.usd_per_output_token
                spend_by_tier[step.tier] = spend_by_tier.get(step.tier, 0.0) + cost
                verifier += verifier_cost_usd
                attempts += 1
                if ok[k]:
                    green += 1
                    first += int(j == 0)
                    break
        model_spend = sum(spend_by_tier.values())
        spend = model_spend + verifier
        out["policies"][label] = {
            "green_prs": green, "fpy": first / len(tasks) if tasks else None,
            "attempts": attempts, "spend_usd": spend, "verifier_usd": verifier,
            "spend_by_tier": spend_by_tier,
            "top_tier_share": spend_by_tier.get(top, 0.0) / model_spend if model_spend else 0.0,
            "cost_per_green_pr": spend / green if green else None,
        }
    return out
