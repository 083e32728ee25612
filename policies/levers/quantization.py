"""Quantization lever: which variant of each tier serves (bf16, int8, int4 ...)."""

from __future__ import annotations

from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "NAME", "anchor", "apply", "space"]

NAME = "quantization"


def space(active, ctx: LeverContext) -> dict[str, Param]:
    return {f"variant_{t.name}": Param.choice(*[v.name for v in t.variants])
            for t in ctx.fleet.tiers if len(t.variants) > 1}


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    return {f"variant_{t.name}": active.spec.quantization.get(t.name, t.variant().name)
            for t in ctx.fleet.tiers if len(t.variants) > 1}


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    quant = dict(active.spec.quantization)
    for key, value in point.items():
        tier = key[len("variant_"):]
        default = ctx.fleet.tier(tier).variant().name
        if quant.get(tier, default) == value:
            continue  # unchanged: an explicit default entry stays as the active wrote it
        if default == value:
            quant.pop(tier, None)  # the default needs no entry
        else:
            quant[tier] = value
    # A distillation whose adapter the new variant lacks would be refused: drop it.
    distill = {}
    for fam, target in active.spec.distillation.items():
        variant = ctx.fleet.tier(target.tier).variant(quant.get(target.tier))
        if target.adapter in [a.name for a in variant.adapters]:
            distill[fam] = target.model_dump(mode="json")
    # A shadow of the variant now served would show nothing new (and is refused): an
    # exploration's shadow of it ends with the change that serves it.
    routing = active.spec.routing
    shadows = {t: v for t, v in routing.shadow_variants.items()
               if v != quant.get(t, ctx.fleet.tier(t).variant().name)}
    return active.evolve(author=author, description="quantization search",
                         quantization=quant, distillation=distill,
                         routing=routing.model_copy(update={"shadow_variants": shadows}))


LEVER = LeverSpec(
    name=NAME,
    policy_section="quantization",
    summary="Which variant of each tier serves (bf16, int8, int4 ...): a cheaper variant "
            "lowers the price of every attempt on that tier if quality holds.",
    params=("variant_<tier>",),
    space=space,
    anchor=anchor,
    apply=apply,
    gates=("pinned_weights", "reproducibility", "quality_non_inferiority", "cost_latency"),
    serving_effect="serving.tiers.deployment_key",
    estimate="experiments.replay.ReplayContext.pass_prob",
    report="`spec.quantization.<tier>` lines of the policy diff (variant set or removed)",
)
