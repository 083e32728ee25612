"""``LeverSpec``: everything one lever means, across packages, in one value.

A lever's search space, anchor and proposer live in its module here; what it changes in
the Policy, where the gateway applies it, where the estimator models it, which gates judge
it and how a change report shows it live in other packages. Each lever module declares
``LEVER = LeverSpec(...)`` naming all of them, so a reader (and ``docs/levers.md``, which
``python -m policies.levers.docs`` writes from these values) finds a lever's whole meaning
in one place. The cross-package names are strings, since ``policies`` must not import the
layers above it; ``resolve`` turns a dotted path into the object it names, and the tests
check that every one of them resolves and that every gate named exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

__all__ = ["LeverSpec", "resolve"]


@dataclass(frozen=True)
class LeverSpec:
    """One lever: what it searches, what it changes, who applies, models and judges it.

    - ``name``: the lever's name (``policies.levers.LEVER_NAMES``).
    - ``policy_section``: the ``PolicySpec`` field (``spec.<section>``) it changes.
    - ``summary``: one sentence for a platform owner.
    - ``params``: the search-space parameter names, ``<tier>``, ``<family>``, ``<feature>``
      and ``<i>`` standing for the parts that depend on the fleet and the window.
    - ``space``/``anchor``/``apply``: the lever module's functions.
    - ``gates``: names of the gates (``gates.gates.GATE_NAMES``) whose verdict judges it.
    - ``serving_effect``: dotted path of where the gateway applies it.
    - ``estimate``: dotted path of where the counterfactual estimator models it.
    - ``report``: how a change report describes it (``diff_lines`` gives its diff lines).
    """

    name: str
    policy_section: str
    summary: str
    params: tuple[str, ...]
    space: Callable[..., dict[str, Any]]
    anchor: Callable[..., dict[str, Any]]
    apply: Callable[..., Any]
    gates: tuple[str, ...]
    serving_effect: str
    estimate: str
    report: str

    def __post_init__(self) -> None:
        if not self.gates:
            raise ValueError(f"lever {self.name!r}: names no gate that judges it")
        for what in ("serving_effect", "estimate"):
            path = getattr(self, what)
            if not path or any(not part.isidentifier() for part in path.split(".")):
                raise ValueError(f"lever {self.name!r}: {what} {path!r} is not a dotted path")

    def diff_lines(self, old: Any, new: Any) -> list[str]:
        """The lines of ``describe_diff(old, new)`` that are this lever's (``spec.<section>``):
        what a change report lists under "What changed" for it."""
        from policies.policy import describe_diff

        head = f"spec.{self.policy_section}"
        return [line for line in describe_diff(old, new)
                if line.startswith((f"{head}.", f"{head}:"))]


def resolve(path: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then
    attributes (``"serving.gateway_core.GatewayCore.route"``). Imports on call only."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if module_name != missing and not module_name.startswith(missing + "."):
                raise  # the module exists, but one of its own imports is missing
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module in {path!r}")
