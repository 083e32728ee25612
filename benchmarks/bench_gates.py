"""Gate costs.

Default: what a verifier costs in-process vs in the sandbox, and the gate machinery's own
cost on the 210-case reference suite with the serving path faked (only our code).
``--real-fleet``: also start the tiny random-weight fleet (serving.testing, Ray Serve +
vLLM on the CPU), run ``autopilot gate``'s logic twice on a 30-case suite through the real
gateway and print the wall time, per-call cost and whether both runs gave the same bundle
hash; the same-run baseline is the same gate with the serving path faked.

Run: .venv/bin/python benchmarks/bench_gates.py [--real-fleet]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ACTIVE = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: bench, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [S, M, L], max_attempts: 3}
  guardrails: {max_attempts_per_task: 3, max_tokens_per_task: 200}
  gates: {non_inferiority_margin: 0.2}
"""


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _echo_answer(case, tier, variant, attempt) -> str:
    return case.expected or ""


def verifier_costs() -> None:
    from gates.suite import ProgramVerifier, load_reference_suite
    from gates.verifiers import check_output

    suite = load_reference_suite()
    inproc = _time(lambda: [check_output(c, c.expected) for c in suite.cases], 20)
    per_case_inproc = statistics.median(inproc) / len(suite.cases)
    case = suite.cases[0]
    program = case.model_copy(update={"verifier": ProgramVerifier(
        source="import json,sys\nd=json.load(sys.stdin)\n"
               "print('PASS' if d['answer']==d['expected'] else 'FAIL')\n")})
    per_case_sandbox = statistics.median(_time(lambda: check_output(program, case.expected), 20))
    print(f"reference verifier in-process : {per_case_inproc * 1e6:8.1f} us/case")
    print(f"program check in the sandbox  : {per_case_sandbox * 1e3:8.1f} ms/case "
          f"({per_case_sandbox / per_case_inproc:,.0f}x the in-process verifier)")


def fake_gate_seconds(suite, policy, fleet, manifest: Path) -> float:
    from gates.fakes import FakeServingPath
    from gates.runner import GateOptions, run_gates

    def gate() -> None:
        run_gates(candidate=policy, baseline=policy, fleet=fleet, manifest_dir=manifest.parent,
                  suite=suite, serving=FakeServingPath(policies={1: policy},
                                                       answer=_echo_answer),
                  options=GateOptions())

    return statistics.median(_time(gate, 5))


def real_fleet(root: Path) -> None:
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.loop.gating import run_gate_command
    from controlplane.settings import StateDir
    from gates.suite import reference_suite, save_suite
    from policies.policy import load_policy
    from serving.fleet import start_fleet
    from serving.testing import make_tiny_fleet

    manifest = make_tiny_fleet(root / "fleet")
    policy_file = root / "active.yaml"
    policy_file.write_text(ACTIVE)
    state = StateDir(root / "state")
    initialise_state(state, fleet_file=manifest, policy_file=policy_file)
    suite = reference_suite(2)
    suite_file = save_suite(suite, root / "suite.json")
    baseline = fake_gate_seconds(suite, load_policy(policy_file), load_fleet(manifest), manifest)
    t = time.perf_counter()
    handle = start_fleet(manifest, store_url=state.store_url(), http_port=0,
                         spans_path=state.spans_dir / "bench.jsonl")
    print(f"tiny fleet start (3 tiers)    : {time.perf_counter() - t:8.1f} s")
    try:
        walls, hashes, calls = [], [], 0
        for _ in range(2):
            t = time.perf_counter()
            result = run_gate_command(state, policy_file, suite_path=suite_file, url=handle.url,
                                      fleet_path=manifest, echo=lambda _line: None)
            walls.append(time.perf_counter() - t)
            hashes.append(result.bundle["bundle_hash"])
            calls = sum(len(c.attempts) for run in result.report.runs.values()
                        for c in run.cases) + sum(len(p.calls) for p in result.report.probes)
            print(f"  overall {result.report.overall.value}: "
                  + ", ".join(f"{r.name} {r.phase.value}" for r in result.report.results))
        wall = statistics.median(walls)
        print(f"gate, 30 cases, real gateway  : {wall:8.1f} s ({calls} calls, "
              f"{wall / calls * 1e3:.0f} ms/call; {wall / baseline:,.0f}x the same gate with "
              f"serving faked, {baseline * 1e3:.1f} ms)")
        print(f"same bundle hash on rerun     : {hashes[0] == hashes[1]}")
    finally:
        handle.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-fleet", action="store_true")
    args = parser.parse_args()
    verifier_costs()
    from contracts.manifest import load_fleet
    from gates.suite import load_reference_suite
    from policies.policy import load_policy

    with tempfile.TemporaryDirectory(prefix="bench-gates-") as tmp:
        root = Path(tmp)
        if args.real_fleet:
            real_fleet(root)
            return
        # The machinery alone on the reference suite: a fleet manifest is only read for
        # pinned files, so the state's starter fleet (which pins nothing) is enough here.
        policy_file = root / "active.yaml"
        policy_file.write_text(ACTIVE)
        from controlplane.bootstrap import STARTER_DIR

        manifest = STARTER_DIR / "fleet.yaml"
        seconds = fake_gate_seconds(load_reference_suite(), load_policy(policy_file),
                                    load_fleet(manifest), manifest)
        print(f"run_gates, 210 cases, fake serving: {seconds:.3f} s "
              f"({seconds / (3 * 210) * 1e3:.2f} ms of gate machinery per case run)")


if __name__ == "__main__":
    main()
