"""Regenerate ``sample_spans.jsonl``, the sample telemetry ``autopilot init --sample`` ingests.

    python -m controlplane.starter.make_sample

Two days of the seeded span simulator (``telemetry.synthetic``: simulated, not measured)
under the starter policy and fleet; the file is committed so that ``autopilot init
--sample && autopilot metrics`` works in seconds without a fleet. Deterministic: running
this again writes the same bytes (a test checks the committed file is what it writes).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["SAMPLE_DAYS", "SAMPLE_PATH", "SAMPLE_TASKS_PER_DAY", "sample_spans", "write_sample"]

HERE = Path(__file__).resolve().parent
SAMPLE_PATH = HERE / "sample_spans.jsonl"
SAMPLE_DAYS = ("2026-11-19", "2026-11-20")
SAMPLE_TASKS_PER_DAY = 110


def sample_spans():
    """The sample's spans, day after day (flat JSON-lines dicts)."""
    from contracts.manifest import load_fleet
    from policies.policy import load_policy
    from telemetry.synthetic import WorkloadShape, simulate_spans

    fleet = load_fleet(HERE / "fleet.yaml")
    policy = load_policy(HERE / "policy.yaml")
    for n, day in enumerate(SAMPLE_DAYS):
        yield from simulate_spans(policy, fleet, WorkloadShape(
            tasks=SAMPLE_TASKS_PER_DAY, day=day, seed=7 + n))


def write_sample(path: str | Path = SAMPLE_PATH) -> int:
    """Write the sample to ``path``; returns the number of spans."""
    from telemetry.synthetic import write_spans

    return write_spans(sample_spans(), path)


if __name__ == "__main__":  # pragma: no cover
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_PATH
    count = write_sample(out)
    print(f"wrote {count} spans ({out.stat().st_size / 1024:.0f} KiB) to {out}")
