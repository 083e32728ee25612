"""How candidates are judged offline: the telemetry window, outcome models, the
counterfactual replay estimator, the Ray Tune search and ``autopilot whatif``.

Imports stay light: numpy/pandas modules load on first use of a name below.
The functions named like their modules (``replay``, ``search``, ``whatif``) are
imported from those modules: once a submodule is loaded, Python binds the package
attribute of that name to the module, so a lazy alias here would be shadowed.
"""

from __future__ import annotations

from contracts.fronts import lazy_front

_HOME = {
    "Window": "experiments.window",
    "build_window": "experiments.window",
    "load_window": "experiments.window",
    "OutcomeModels": "experiments.outcomes",
    "fit_outcome_models": "experiments.outcomes",
    "Estimate": "experiments.estimator",
    "Interval": "experiments.estimator",
    "Deltas": "experiments.estimator",
    "estimate": "experiments.estimator",
    "compare": "experiments.estimator",
    "ReplayContext": "experiments.replay",
    "Candidate": "experiments.search",
}

__all__ = [
    "Candidate",
    "Deltas",
    "Estimate",
    "Interval",
    "OutcomeModels",
    "ReplayContext",
    "Window",
    "build_window",
    "compare",
    "estimate",
    "fit_outcome_models",
    "load_window",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
