"""Outcome models: P(an attempt passes | task features, tier, variant, adapter, history).

A logistic regression (scikit-learn) on every logged attempt (serve, shadow and gate) and
on the window's joint-outcome evidence (``Window.joint_frame``: a verdict read after the
same task's failure on another tier, from shadow attempts), calibrated with Platt scaling
across three folds (``CalibratedClassifierCV``). Design of one attempt row: the task's
standardised numeric features, one-hot categorical features and family; a one-hot of the
(tier, variant, adapter) combination; that one-hot times the numeric features (a tier's
advantage may grow with difficulty); and its history (failed attempts so far per tier,
attempt number), which is what lets a cascade's later attempts be predicted from tasks
that already failed below. The history terms are shared by all combinations; the replay
corrects each (combination, history) state on the tasks observed in it
(``experiments.replay.ReplayContext.state_shift``).

Every piece of the fitted model is linear before its sigmoid, so the replay evaluates it
for all tasks x combinations at once (``task_combo_logits``) instead of calling
``predict_proba`` per candidate; ``predict`` is the reference the tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OutcomeModels", "design_matrix", "fit_outcome_models", "training_rows"]


def _n_numeric(names: list[str]) -> int:
    return sum(1 for name in names if "=" not in name)


def design_matrix(task_x: np.ndarray, n_numeric: int, combo: np.ndarray, n_combos: int,
                  hist: np.ndarray, attempt: np.ndarray) -> np.ndarray:
    """Rows of the outcome model (see the module docstring), one per attempt."""
    n = len(combo)
    onehot = np.zeros((n, n_combos))
    onehot[np.arange(n), combo] = 1.0
    num = task_x[:, :n_numeric]
    inter = (onehot[:, :, None] * num[:, None, :]).reshape(n, n_combos * n_numeric)
    return np.hstack([task_x, onehot, inter, hist, (attempt - 1.0)[:, None]])


@dataclass
class OutcomeModels:
    """The fitted, calibrated model and its linear pieces for vectorised replay."""

    estimator: object | None  # CalibratedClassifierCV, or None for a constant model
    n_numeric: int
    n_combos: int
    n_hist: int
    constant: float | None
    # Per calibration fold k: z = X_task @ w_task + w_combo[c] + X_num @ W_inter[c] +
    # w_hist . h + w_att * (attempt - 1) + b ; p_k = 1 / (1 + exp(a_k * z + c_k))
    folds: list[dict[str, np.ndarray | float]]
    n_train: int
    brier: float | None

    def predict(self, task_x: np.ndarray, combo: np.ndarray, hist: np.ndarray,
                attempt: np.ndarray) -> np.ndarray:
        """P(pass) for attempt rows through scikit-learn's own ``predict_proba``."""
        if self.constant is not None:
            return np.full(len(combo), self.constant)
        x = design_matrix(task_x, self.n_numeric, combo, self.n_combos, hist, attempt)
        return self.estimator.predict_proba(x)[:, 1]

    def task_combo_logits(self, task_x: np.ndarray) -> np.ndarray:
        """[K, n, C]: each fold's linear score of every task on every combination, history 0."""
        n = len(task_x)
        if self.constant is not None:
            return np.zeros((1, n, self.n_combos))
        num = task_x[:, : self.n_numeric]
        out = np.empty((len(self.folds), n, self.n_combos))
        for k, f in enumerate(self.folds):
            base = task_x @ f["w_task"] + f["b"]
            out[k] = base[:, None] + f["w_combo"][None, :] + num @ f["W_inter"].T
        return out

    def history_shift(self, hist: np.ndarray, attempt: int) -> np.ndarray:
        """[K]: each fold's score shift for a history vector and attempt number."""
        if self.constant is not None:
            return np.zeros(1)
        return np.array([float(f["w_hist"] @ hist) + f["w_att"] * (attempt - 1)
                         for f in self.folds])

    def calibrate(self, z: np.ndarray) -> np.ndarray:
        """Mean over folds of the calibrated probability; ``z`` is [K, ...] fold scores."""
        if self.constant is not None:
            return np.full(z.shape[1:], self.constant)
        total = np.zeros(z.shape[1:])
        for k, f in enumerate(self.folds):
            total += 1.0 / (1.0 + np.exp(f["a"] * z[k] + f["c"]))
        return total / len(self.folds)


def fit_outcome_models(window, attempts=None, fleet=None, *, seed: int = 0,
                       regularisation: float = 1.0) -> OutcomeModels:
    """Fit on the window's logged attempts (serve, shadow and gate; all are real verdicts).

    ``window`` is a compiled ``experiments.Window``, or the ``tasks`` frame when called as
    ``fit_outcome_models(tasks, attempts, fleet)`` (calls are then not needed: prices do
    not enter the outcome model).
    """
    from experiments.window import Window, build_window

    if not isinstance(window, Window):
        import pandas as pd

        if attempts is None or fleet is None:
            raise TypeError("fit_outcome_models(tasks, attempts, fleet) needs all three")
        empty_calls = pd.DataFrame({c: pd.Series([], dtype=d) for c, d in _call_dtypes()})
        window = build_window(window, attempts, empty_calls, fleet)
    frame = training_rows(window)
    n_hist = len(window.tiers)
    n_numeric = _n_numeric(window.model_feature_names)
    n_combos = len(window.combos)
    y = frame["passed"].to_numpy(dtype=bool)
    if len(y) == 0 or y.all() or (~y).all():
        rate = float(y.mean()) if len(y) else 0.5
        return OutcomeModels(None, n_numeric, n_combos, n_hist, rate, [], len(y), None)
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    task_x = window.model_features[frame["task"].to_numpy()]
    hist = frame[[f"hist_{i}" for i in range(n_hist)]].to_numpy(dtype=float)
    attempt = frame["attempt"].to_numpy(dtype=float)
    combo = frame["combo"].to_numpy()
    x = design_matrix(task_x, n_numeric, combo, n_combos, hist, attempt)
    cv = 3 if min(y.sum(), (~y).sum()) >= 3 else 2
    model = CalibratedClassifierCV(
        LogisticRegression(C=regularisation, max_iter=1000), method="sigmoid", cv=cv)
    model.fit(x, y)
    g = task_x.shape[1]
    folds = []
    for cc in model.calibrated_classifiers_:
        lr = cc.estimator
        w = lr.coef_[0]
        cal = cc.calibrators[0]
        folds.append({
            "w_task": w[:g],
            "w_combo": w[g:g + n_combos],
            "W_inter": w[g + n_combos:g + n_combos + n_combos * n_numeric].reshape(
                n_combos, n_numeric),
            "w_hist": w[g + n_combos + n_combos * n_numeric:-1],
            "w_att": float(w[-1]),
            "b": float(lr.intercept_[0]),
            "a": float(cal.a_),
            "c": float(cal.b_),
        })
    p = model.predict_proba(x)[:, 1]
    brier = float(np.mean((p - y) ** 2))
    return OutcomeModels(model, n_numeric, n_combos, n_hist, None, folds, len(y), brier)


def training_rows(window):
    """The outcome model's rows: the attempt rows and the joint-outcome evidence rows."""
    import pandas as pd

    joint = window.joint_frame
    if joint is None or not len(joint):
        return window.attempts_frame
    return pd.concat([window.attempts_frame, joint], ignore_index=True)


def _call_dtypes():
    from contracts.tables import CALL_COLUMNS

    return CALL_COLUMNS.items()
