"""One module per lever: each declares its search space and turns a sampled point into a
new Policy version (``Policy.evolve``, parent = the active policy).

A lever module has ``NAME``, ``space(active, ctx) -> dict[str, Param]``,
``anchor(active, ctx)`` (the point nearest the active policy),
``apply(active, point, ctx) -> Policy`` and ``LEVER``, its ``LeverSpec``: the policy
section it changes, where the gateway applies it, where the estimator models it, which
gates judge it and how a change report shows it (``LEVERS`` maps each name to it;
``docs/levers.md`` is written from them by ``python -m policies.levers.docs``).
``joint_space``/``apply_joint`` combine several levers with ``<lever>__<param>`` names.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from policies.levers._space import LeverContext, Param
from policies.levers.spec import LeverSpec

__all__ = [
    "LEVERS",
    "LEVER_NAMES",
    "LeverContext",
    "LeverSpec",
    "Param",
    "apply_joint",
    "joint_anchor",
    "joint_space",
    "lever",
    "lever_spec",
]

LEVER_NAMES: tuple[str, ...] = ("routing", "quantization", "cache", "distillation", "guardrails")
SEP = "__"

# name -> LeverSpec, in LEVER_NAMES order (each lever module's ``LEVER``).
LEVERS: dict[str, LeverSpec] = {
    name: import_module(f"policies.levers.{name}").LEVER for name in LEVER_NAMES
}


def _check(name: str) -> None:
    if name not in LEVER_NAMES:
        raise ValueError(f"unknown lever {name!r} (levers: {', '.join(LEVER_NAMES)})")


def lever(name: str):
    """The lever's module (``NAME``, ``space``, ``anchor``, ``apply``, ``LEVER``)."""
    _check(name)
    return import_module(f"policies.levers.{name}")


def lever_spec(name: str) -> LeverSpec:
    """The lever's ``LeverSpec``; an unknown name is refused as by ``lever``."""
    _check(name)
    return LEVERS[name]


def joint_space(names, active, ctx: LeverContext) -> dict[str, Param]:
    space: dict[str, Param] = {}
    for name in names:
        for key, param in lever_spec(name).space(active, ctx).items():
            space[f"{name}{SEP}{key}"] = param
    return space


def joint_anchor(names, active, ctx: LeverContext) -> dict[str, Any]:
    """The point nearest the active policy: the search's first trial starts from it."""
    point: dict[str, Any] = {}
    for name in names:
        for key, value in lever_spec(name).anchor(active, ctx).items():
            point[f"{name}{SEP}{key}"] = value
    return point


def apply_joint(names, active, point: dict[str, Any], ctx: LeverContext, *,
                author: str = "autopilot-search"):
    """Apply each lever's part of ``point`` in turn; the result is one version after active."""
    policy = active
    for name in names:
        part = {k.split(SEP, 1)[1]: v for k, v in point.items() if k.startswith(name + SEP)}
        if part:
            policy = lever_spec(name).apply(policy, part, ctx)
    spec = policy.spec.model_dump(mode="json")
    return active.evolve(author=author, description=f"search over {'+'.join(names)}", **spec)
