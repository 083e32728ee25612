"""Distillation lever: serve a family from a smaller tier's adapter distilled for it."""

from __future__ import annotations

from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "NAME", "adapter_options", "anchor", "apply", "space"]

NAME = "distillation"
OFF = "off"


def adapter_options(fleet, family: str) -> list[str]:
    """``"tier/variant/adapter"`` for every adapter the manifest lists for ``family``."""
    out = []
    for t in fleet.tiers:
        for v in t.variants:
            for a in v.adapters:
                if a.family in (None, family):
                    out.append(f"{t.name}/{v.name}/{a.name}")
    return out


def _active_option(active, ctx: LeverContext, family: str) -> str:
    target = active.spec.distillation.get(family)
    if target is None:
        return OFF
    variant = ctx.fleet.tier(target.tier).variant(active.spec.quantization.get(target.tier)).name
    return f"{target.tier}/{variant}/{target.adapter}"


def space(active, ctx: LeverContext) -> dict[str, Param]:
    out = {}
    for fam in ctx.families:
        options = adapter_options(ctx.fleet, fam)
        if options:
            # The active target is always an option, so the anchor reproduces it.
            out[f"family_{fam}"] = Param.choice(
                *dict.fromkeys((OFF, *options, _active_option(active, ctx, fam))))
    return out


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    return {key: _active_option(active, ctx, key[len("family_"):])
            for key in space(active, ctx)}


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    distill = {f: d.model_dump(mode="json") for f, d in active.spec.distillation.items()}
    quant = dict(active.spec.quantization)
    for key, value in point.items():
        fam = key[len("family_"):]
        if value == OFF:
            distill.pop(fam, None)
            continue
        tier, variant, adapter = str(value).split("/")
        current = ctx.fleet.tier(tier).variant(quant.get(tier)).name
        if current != variant:
            continue  # the adapter belongs to another variant than the one this tier serves
        distill[fam] = {"tier": tier, "adapter": adapter}
    # A shadow of the adapter now served would show nothing new (and is refused): an
    # exploration's shadow of it ends with the change that serves it.
    routing = active.spec.routing.model_dump(mode="json")
    for fam, entry in routing.get("families", {}).items():
        served = distill.get(fam)
        kept = {t: a for t, a in (entry.get("shadow_adapters") or {}).items()
                if served is None or (served["tier"], served["adapter"]) != (t, a)}
        if kept:
            entry["shadow_adapters"] = kept
        else:
            entry.pop("shadow_adapters", None)
    return active.evolve(author=author, description="distillation search", distillation=distill,
                         routing=routing)


LEVER = LeverSpec(
    name=NAME,
    policy_section="distillation",
    summary="Serve a task family from a smaller tier with a LoRA adapter distilled for it, "
            "where the adapter's held-out verdicts say it is good enough.",
    params=("family_<family>",),
    space=space,
    anchor=anchor,
    apply=apply,
    gates=("pinned_weights", "reproducibility", "quality_non_inferiority", "cost_latency"),
    serving_effect="serving.gateway_core.GatewayCore.route",
    estimate="experiments.adapter_prior.seed_adapter_outcomes",
    report="`spec.distillation.<family>` lines of the policy diff (tier + adapter); the "
           "tier-mix chart shows the shift",
)
