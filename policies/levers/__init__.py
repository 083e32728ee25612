"""One module per lever: each declares its search space and turns a sampled point into a
new Policy version (``Policy.evolve``, parent = the active policy).

A lever module has ``NAME``, ``space(active, ctx) -> dict[str, Param]``,
``anchor(active, ctx)`` (the point nearest the active policy) and
``apply(active, point, ctx) -> Policy``. ``joint_space``/``apply_joint`` combine several
levers with ``<lever>__<param>`` names.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from policies.levers._space import LeverContext, Param

__all__ = [
    "LEVER_NAMES",
    "LeverContext",
    "Param",
    "apply_joint",
    "joint_anchor",
    "joint_space",
    "lever",
]

LEVER_NAMES: tuple[str, ...] = ("routing", "quantization", "cache", "distillation", "guardrails")
SEP = "__"


def lever(name: str):
    if name not in LEVER_NAMES:
        raise ValueError(f"unknown lever {name!r} (levers: {', '.join(LEVER_NAMES)})")
    return import_module(f"policies.levers.{name}")


def joint_space(names, active, ctx: LeverContext) -> dict[str, Param]:
    space: dict[str, Param] = {}
    for name in names:
        for key, param in lever(name).space(active, ctx).items():
            space[f"{name}{SEP}{key}"] = param
    return space


def joint_anchor(names, active, ctx: LeverContext) -> dict[str, Any]:
    """The point nearest the active policy: the search's first trial starts from it."""
    point: dict[str, Any] = {}
    for name in names:
        for key, value in lever(name).anchor(active, ctx).items():
            point[f"{name}{SEP}{key}"] = value
    return point


def apply_joint(names, active, point: dict[str, Any], ctx: LeverContext, *,
                author: str = "autopilot-search"):
    """Apply each lever's part of ``point`` in turn; the result is one version after active."""
    policy = active
    for name in names:
        part = {k.split(SEP, 1)[1]: v for k, v in point.items() if k.startswith(name + SEP)}
        if part:
            policy = lever(name).apply(policy, part, ctx)
    spec = policy.spec.model_dump(mode="json")
    return active.evolve(author=author, description=f"search over {'+'.join(names)}", **spec)
