"""How candidates are judged offline: the telemetry window, outcome models, the
counterfactual replay estimator, the Ray Tune search and ``autopilot whatif``.

Imports stay light: numpy/pandas modules load on first use of a name below.
No public name here is the name of a submodule (``replay``, ``search``, ``whatif``,
``window``, ...): once a submodule is loaded, Python binds the package attribute of that
name to the module, so a lazy name equal to it would be shadowed (``lazy_front`` refuses
such names). The functions are therefore named for what they do: ``replay_policy``,
``search_candidates``, ``run_whatif``, ``load_estimator_window``.
"""

from __future__ import annotations

from contracts.fronts import lazy_front

_HOME = {
    "Window": "experiments.window",
    "build_window": "experiments.window",
    "load_estimator_window": "experiments.window",
    "OutcomeModels": "experiments.outcomes",
    "fit_outcome_models": "experiments.outcomes",
    "Estimate": "experiments.estimator",
    "Interval": "experiments.estimator",
    "Deltas": "experiments.estimator",
    "estimate": "experiments.estimator",
    "compare": "experiments.estimator",
    "ReplayContext": "experiments.replay",
    "replay_policy": "experiments.replay",
    "Candidate": "experiments.search",
    "search_candidates": "experiments.search",
    "run_whatif": "experiments.whatif",
    "ExplorationPlan": "experiments.exploration",
    "plan_exploration": "experiments.exploration",
}

__all__ = [
    "Candidate",
    "Deltas",
    "Estimate",
    "ExplorationPlan",
    "Interval",
    "OutcomeModels",
    "ReplayContext",
    "Window",
    "build_window",
    "compare",
    "estimate",
    "fit_outcome_models",
    "load_estimator_window",
    "plan_exploration",
    "replay_policy",
    "run_whatif",
    "search_candidates",
]
__getattr__, __dir__ = lazy_front(__name__, _HOME, globals())
