"""The top layer: the loop and its faces. Settings and the state directory (``settings``),
pure loop decisions and their adapters (``loop``), the Prefect flows (``flows``) and their
deployments (``deploy``), reports, views, the ``autopilot`` CLI (``cli``) and the demo.
Names load on first use.
"""

from __future__ import annotations

from contracts.fronts import lazy_front

_HOME = {
    **dict.fromkeys(("Settings", "StateDir", "resolve_state_dir"), "controlplane.settings"),
    **dict.fromkeys(("run_demo", "demo_plan"), "controlplane.demo"),
    "main": "controlplane.cli.root",
}
__all__ = [
    "Settings",
    "StateDir",
    "demo_plan",
    "main",
    "resolve_state_dir",
    "run_demo",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
