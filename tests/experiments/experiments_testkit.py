"""Shared test data for the experiments tests: a small fleet, a logging policy and a
simulated, ingested window. A plain module (not conftest) so tests can import it by name."""

from __future__ import annotations

from pathlib import Path

FLEET_YAML = """
apiVersion: autopilot/v1
kind: FleetManifest
metadata: {name: test-fleet}
spec:
  pricing: {cached_input_discount: 0.9}
  tiers:
    - name: S
      rank: 0
      model: s
      default_variant: bf16
      variants:
        - name: bf16
          weights: s
          economics: {gpus: 1, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 6000, decode_tokens_per_s: 6000}
          adapters:
            - {name: list-ops-v1, path: a, family: list_ops}
        - name: int8
          weights: s8
          economics: {gpus: 1, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 9000, decode_tokens_per_s: 9000}
    - name: M
      rank: 1
      model: m
      default_variant: bf16
      variants:
        - name: bf16
          weights: m
          economics: {gpus: 2, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 2200, decode_tokens_per_s: 2200}
        - name: int8
          weights: m8
          economics: {gpus: 1, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 2200, decode_tokens_per_s: 2200}
    - name: L
      rank: 2
      model: l
      default_variant: bf16
      variants:
        - name: bf16
          weights: l
          economics: {gpus: 8, usd_per_gpu_hour: 2.5, prefill_tokens_per_s: 700, decode_tokens_per_s: 700}
"""

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



def simulate_window(policy, fleet, tmp: Path, *, tasks: int, seed: int, day: str = "2026-11-20"):
    """Spans from the project's seeded simulator, ingested, compiled into a Window."""
    from experiments.window import load_window
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    spans = tmp / f"spans-{seed}.jsonl"
    write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, seed=seed, day=day)),
                spans)
    ingest_paths([spans], tmp / f"tel-{seed}")
    return spans, load_window(tmp / f"tel-{seed}", fleet=fleet)
