"""A large simulated telemetry window for the replay and search benchmarks (cached on disk).

Spans come from the project's seeded simulator (telemetry.synthetic) under a
score-routed logging policy with 10% exploration, on the fixture fleet with int8 variants
and a distilled adapter (``serving.testing.tiny_manifest``), so every lever has options to
search.
"""

from __future__ import annotations

import time
from pathlib import Path

POLICY_YAML = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: bench, created: 2026-11-01T00:00:00Z}
spec:
  routing:
    router: score
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    max_attempts: 3
    exploration_rate: 0.1
    shadow_rate: 0.02
  cache: {prefix: {S: true, M: true}}
  guardrails: {max_attempts_per_task: 5}
"""


def fleet_and_policy():
    from policies.policy import load_policy
    from serving.testing import tiny_manifest

    return tiny_manifest("bench-fleet"), load_policy(POLICY_YAML)


def large_window(tasks: int, cache_dir: Path, seed: int = 7):
    """The compiled window of ``tasks`` simulated tasks (spans generated once per size)."""
    from experiments.window import load_estimator_window
    from telemetry.ingest import ingest_paths, list_days
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    fleet, policy = fleet_and_policy()
    root = cache_dir / f"window-{tasks}-{seed}"
    if not list_days(root / "telemetry", "tasks") if root.exists() else True:
        t0 = time.perf_counter()
        spans = root / "spans.jsonl"
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, seed=seed)), spans)
        ingest_paths([spans], root / "telemetry")
        spans.unlink()
        print(f"simulated and ingested {tasks} tasks in {time.perf_counter() - t0:.0f} s",
              flush=True)
    t0 = time.perf_counter()
    window = load_estimator_window(root / "telemetry", fleet=fleet)
    print(f"window compiled: {window.n} tasks in {time.perf_counter() - t0:.1f} s", flush=True)
    return fleet, policy, window
