"""Cache lever: prefix (KV) caching per tier, and the response cache (exact or similarity).

The response cache is searched only as exact or off by default: a similarity cache can
serve a wrong answer, and its false-hit rate is held to ``gates.max_cache_false_hit_rate``
by the gates, not by the estimate.
"""

from __future__ import annotations

from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = ["LEVER", "NAME", "anchor", "apply", "space"]

NAME = "cache"


TTL_HOURS = (1, 6, 24, 72)


def _response(active) -> str:
    r = active.spec.cache.response
    return r.mode if r.enabled else "off"


def _ttl_hours(active) -> float:
    """The active TTL as one of the searched values, or exactly in hours."""
    ttl_s = active.spec.cache.response.ttl_s
    return next((h for h in TTL_HOURS if h * 3600 == ttl_s), ttl_s / 3600)


def space(active, ctx: LeverContext) -> dict[str, Param]:
    out = {f"prefix_{t.name}": Param.choice(True, False) for t in ctx.fleet.tiers}
    # Searched: off or exact. An active similarity cache stays an option (the anchor),
    # never one the search moves to.
    out["response"] = Param.choice(*dict.fromkeys(("off", "exact", _response(active))))
    out["ttl_hours"] = Param.choice(*dict.fromkeys((*TTL_HOURS, _ttl_hours(active))))
    return out


def anchor(active, ctx: LeverContext) -> dict[str, Any]:
    c = active.spec.cache
    return {**{f"prefix_{t.name}": bool(c.prefix.get(t.name)) for t in ctx.fleet.tiers},
            "response": _response(active), "ttl_hours": _ttl_hours(active)}


def apply(active, point: dict[str, Any], ctx: LeverContext, *, author: str = "autopilot-search"):
    cache = active.spec.cache.model_dump(mode="json")
    prefix = dict(cache["prefix"])
    for key, value in point.items():
        if key.startswith("prefix_"):
            tier = key[len("prefix_"):]
            if bool(value) == bool(prefix.get(tier)):
                continue  # unchanged (an explicit ``false`` stays)
            if value:
                prefix[tier] = True
            else:
                prefix.pop(tier, None)
    cache["prefix"] = prefix
    mode = point.get("response")
    if mode is not None and mode != _response(active):
        cache["response"]["enabled"] = mode != "off"
        if mode != "off":
            cache["response"]["mode"] = mode
    if "ttl_hours" in point and point["ttl_hours"] != _ttl_hours(active):
        cache["response"]["ttl_s"] = max(1, round(float(point["ttl_hours"]) * 3600))
    return active.evolve(author=author, description="cache search", cache=cache)


LEVER = LeverSpec(
    name=NAME,
    policy_section="cache",
    summary="Prefix (KV) caching per tier and the response cache (off or exact, with its "
            "time to live): repeated prompts cost less, never at the price of a wrong answer.",
    params=("prefix_<tier>", "response", "ttl_hours"),
    space=space,
    anchor=anchor,
    apply=apply,
    gates=("cache_safety", "reproducibility", "cost_latency"),
    serving_effect="serving.gateway_core.GatewayCore._call",
    estimate="experiments.window.build_window",
    report="`spec.cache.*` lines of the policy diff; the cache-hit-rate chart shows the effect",
)
