"""Shared test data for the experiments tests: a small fleet, a logging policy and a
simulated, ingested window. A plain module (not conftest) so tests can import it by name."""

from __future__ import annotations

from pathlib import Path

from serving.testing import tiny_manifest

# S, M, L with int8 variants of S and M and a list_ops adapter on S/bf16.
FLEET = tiny_manifest("test-fleet")

POLICY_YAML = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 3, author: test, created: 2026-11-01T00:00:00Z}
spec:
  routing:
    router: score
    escalation: [S, M, L]
    weights: {difficulty: 1.0}
    thresholds: [1.5, 2.5]
    max_attempts: 3
    exploration_rate: 0.3
  guardrails: {max_attempts_per_task: 5}
"""



def simulate_window(policy, fleet, tmp: Path, *, tasks: int, seed: int, day: str = "2026-11-20",
                    **shape):
    """Spans from the project's seeded simulator, ingested, compiled into a Window
    (``shape``: further ``WorkloadShape`` fields, e.g. ``latent_sd``)."""
    from experiments.window import load_estimator_window
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    spans = tmp / f"spans-{seed}.jsonl"
    write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, seed=seed, day=day,
                                                            **shape)),
                spans)
    ingest_paths([spans], tmp / f"tel-{seed}")
    return spans, load_estimator_window(tmp / f"tel-{seed}", fleet=fleet)
