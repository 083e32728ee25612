"""One pricing function: the estimator's window prices a span exactly as ``metrics`` does.

An explicit ``autopilot.cost_usd`` on an attempt overrides the cost model everywhere
(DESIGN: metrics, estimator, reports). The active policy replayed on its own deterministic
window must then cost, per Green PR, what ``economics.metrics.compute_metrics`` says the
same telemetry cost: with call spans, without them (explicit attempt costs only), and mixed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from experiments_testkit import FLEET

from economics.metrics import compute_metrics
from experiments.estimator import estimate
from experiments.window import build_window, load_estimator_window

# Deterministic logging (no exploration, no shadow): propensity 1 everywhere, so the
# doubly-robust replay of the active policy reads every task's logged trajectory as is.
ACTIVE_YAML = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 4, author: test, created: 2026-11-01T00:00:00Z}
spec:
  routing:
    router: score
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    max_attempts: 3
  cache: {prefix: {M: true}}
  guardrails: {max_attempts_per_task: 5}
"""


def _active():
    from policies.policy import load_policy

    return load_policy(ACTIVE_YAML)


def _spans(tmp: Path, *, tasks: int, seed: int, mode: str) -> Path:
    """Simulated spans rewritten for ``mode``:

    - ``calls``: as simulated (call spans, no explicit cost);
    - ``explicit``: every attempt carries ``autopilot.cost_usd`` and no call span is kept;
    - ``mixed``: a third of the tasks keep their calls, a third carry explicit attempt
      costs without calls, a third carry explicit attempt costs *and* keep their calls
      (the explicit cost wins).
    """
    from contracts.spans import SPAN_ATTEMPT, SPAN_CALL, Attr
    from telemetry.synthetic import WorkloadShape, simulate_spans

    rng = random.Random(seed)
    spans = list(simulate_spans(_active(), FLEET, WorkloadShape(tasks=tasks, seed=seed)))
    list_price = {"S": 0.002, "M": 0.011, "L": 0.09}  # an API-like $ per attempt, by tier
    out = []
    for span in spans:
        attrs = span["attributes"]
        task = attrs.get(Attr.TASK_ID, "")
        kind = int(task.rsplit("t", 1)[-1]) % 3 if mode == "mixed" else None
        explicit = mode == "explicit" or kind in (1, 2)
        keep_calls = mode == "calls" or kind in (0, 2)
        if span["name"] == SPAN_CALL and not keep_calls:
            continue
        if span["name"] == SPAN_ATTEMPT and explicit:
            attrs = {**attrs, Attr.COST_USD: round(
                list_price[attrs[Attr.TIER]] * rng.uniform(0.3, 3.0), 6)}
        out.append({**span, "attributes": attrs})
    path = tmp / f"spans-{mode}-{seed}.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in out))
    return path


def _frames(tmp: Path, mode: str, *, tasks: int = 600, seed: int = 5):
    from telemetry.ingest import ingest_paths

    spans = _spans(tmp, tasks=tasks, seed=seed, mode=mode)
    root = tmp / f"tel-{mode}"
    ingest_paths([spans], root)
    return load_estimator_window(root), spans


def _metrics_cost_per_green(frames) -> float:
    row = compute_metrics(*frames, FLEET).iloc[0]
    return float(row["cost_per_green_pr"])


@pytest.mark.parametrize("mode", ["explicit", "mixed", "calls"])
def test_active_estimate_costs_what_metrics_says(tmp_path, mode):
    frames, _ = _frames(tmp_path, mode)
    _, attempts, calls = frames
    if mode == "explicit":
        assert calls.empty and attempts["cost_usd"].notna().all()
    metrics_value = _metrics_cost_per_green(frames)
    est = estimate(_active(), frames, FLEET, bootstrap=20)
    assert est.cost_per_green_pr.point == pytest.approx(metrics_value, rel=1e-9)
    spend = compute_metrics(*frames, FLEET).iloc[0]["spend_total"]
    assert est.spend_usd.point == pytest.approx(spend, rel=1e-9)


def test_whatif_reports_the_metrics_cost_per_green_pr_on_explicit_only_telemetry(tmp_path,
                                                                                  fleet_path):
    from experiments.whatif import run_whatif

    frames, spans = _frames(tmp_path, "explicit", tasks=400, seed=8)
    report = run_whatif([spans], fleet_path, _active(), lever="routing", candidates=2,
                        trials=1, per_trial=4, executor="inline", progress=False)
    shown = report.active["cost_per_green_pr"]
    value = (shown["point"] if isinstance(shown, dict)
             else float(str(shown).split()[0]) if isinstance(shown, str) else float(shown))
    assert value == pytest.approx(_metrics_cost_per_green(frames), rel=1e-3)
    # No candidate is "free": before the fix every attempt priced at $0 here.
    for row in report.rows:
        assert "-100" not in json.dumps(row, default=str)


# ------------------------------------------------------------- counterfactual prices
def _tables(attempts: list[dict], calls: list[dict] = (), tasks: list[str] | None = None):
    ids = tasks or sorted({a["task_id"] for a in attempts})
    t = pd.DataFrame({"task_id": ids, "family": "f", "outcome": "green",
                      "verifier_passed": True, "review_accepted": pd.NA,
                      "verifier_cost_usd": 0.0, "features": "{}"})
    a = pd.DataFrame([{"attempt": 1, "variant": "bf16", "adapter": pd.NA, "passed": True,
                       "purpose": "serve", "propensity": 1.0, "cost_usd": np.nan,
                       "span_id": f"{r['task_id']}-{r.get('attempt', 1)}-{r.get('purpose', 's')}",
                       **r} for r in attempts])
    c = pd.DataFrame([{"attempt": 1, "variant": "bf16", "adapter": pd.NA,
                       "cached_input_tokens": 0, "cache": "miss", "cost_usd": np.nan,
                       "parent_span_id": pd.NA, **r} for r in calls],
                     columns=["task_id", "attempt", "tier", "variant", "adapter",
                              "input_tokens", "output_tokens", "cached_input_tokens", "cache",
                              "cost_usd", "parent_span_id"])
    return t, a, c


def test_observed_explicit_cells_carry_the_observed_cost():
    w = build_window(*_tables([
        {"task_id": "a", "tier": "L", "cost_usd": 0.5},
        {"task_id": "a", "tier": "S", "cost_usd": 0.02, "purpose": "shadow"},
        {"task_id": "b", "tier": "L", "cost_usd": 1.0, "passed": False},
        {"task_id": "b", "tier": "L", "cost_usd": 3.0, "attempt": 2},
    ]), FLEET)
    s, l = w.combo_index("S", None, None), w.combo_index("L", None, None)
    a, b = list(w.task_ids).index("a"), list(w.task_ids).index("b")
    for matrix in (w.cost_nocache, w.cost_prefix):  # the cache lever cannot reprice a charge
        assert matrix[a, l] == pytest.approx(0.5)
        assert matrix[a, s] == pytest.approx(0.02)  # the shadow attempt saw S on task a
        assert matrix[b, l] == pytest.approx(2.0)  # mean of the task's two L attempts
        # Task b never ran on S: scaled from its own L price by what task a showed of S/L.
        assert matrix[b, s] == pytest.approx(2.0 * 0.02 / 0.5)


def test_unpaired_counterfactual_scales_by_the_manifest_price_ratio():
    w = build_window(*_tables([{"task_id": "a", "tier": "L", "cost_usd": 0.8}]), FLEET)
    s, m, l = (w.combo_index(t, None, None) for t in ("S", "M", "L"))
    e = {t: FLEET.economics(t) for t in ("S", "M", "L")}
    # No call spans anywhere: the manifest ratio of S to L (input and output priced alike here).
    ratio = ((e["S"].usd_per_input_token + e["S"].usd_per_output_token)
             / (e["L"].usd_per_input_token + e["L"].usd_per_output_token))
    assert w.cost_nocache[0, l] == pytest.approx(0.8)
    assert w.cost_nocache[0, s] == pytest.approx(0.8 * ratio)
    assert 0 < w.cost_nocache[0, s] < w.cost_nocache[0, m] < w.cost_nocache[0, l]


def test_call_priced_cells_keep_the_token_model_and_explicit_calls_win():
    w = build_window(*_tables(
        [{"task_id": "a", "tier": "S"}, {"task_id": "b", "tier": "S"}],
        [{"task_id": "a", "tier": "S", "input_tokens": 1000, "output_tokens": 100},
         {"task_id": "b", "tier": "S", "input_tokens": 1000, "output_tokens": 100,
          "cost_usd": 0.25}]), FLEET)
    s, m = w.combo_index("S", None, None), w.combo_index("M", None, None)
    e_s, e_m = FLEET.economics("S"), FLEET.economics("M")
    a, b = list(w.task_ids).index("a"), list(w.task_ids).index("b")
    assert w.cost_nocache[a, s] == pytest.approx(1000 * e_s.usd_per_input_token
                                                 + 100 * e_s.usd_per_output_token)
    assert w.cost_nocache[a, m] == pytest.approx(1000 * e_m.usd_per_input_token
                                                 + 100 * e_m.usd_per_output_token)
    assert w.cost_nocache[b, s] == pytest.approx(0.25)  # the explicit call cost wins
