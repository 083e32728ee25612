"""The gates through the real fleet: Ray Serve gateway, vLLM tiers on pinned weights.

On the trained reference fleet when it exists (training/fleet/fleet.yaml), else on
the tiny random-weight fleet of ``serving.testing`` (gibberish but deterministic outputs:
enough for everything except the quantization quality test, which then skips saying why).

Shows: the active policy passes against itself; a quantized variant that degrades quality is
FAILED with its numbers (the shipped int4 round-trip holds quality on this fleet, as the
ladder in docs/reference_fleet.md measures, so the fixture adds a 2-bit round-trip of every
tier to its copy of the fleet: a quantization that really degrades); a tampered weight file is FAILED naming the file; a verifier that
hangs is killed and reported; rerunning the same gate on the same inputs gives the same
bundle hash apart from timestamps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gates.evidence import build_bundle
from gates.gates import Phase
from gates.runner import GateOptions, run_case, run_gates
from gates.suite import ProgramVerifier, SuiteCase, reference_suite

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REFERENCE_FLEET = REPO / "training" / "fleet" / "fleet.yaml"
ACTIVE_POLICY = """
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: gate-integration, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: fixed, escalation: [S, M, L], max_attempts: 3}
  guardrails: {max_attempts_per_task: 3}
  gates: {non_inferiority_margin: 0.05}
"""
SELF_SUITE_PER_CELL = 5  # 75 cases: a 0.05 margin can be shown from 72 on
DEGRADED_VARIANT = "int2"


def _add_degraded_variant(manifest: Path, name: str, *, bits: int) -> None:
    """Add a ``bits``-bit weight round-trip of every tier's base variant to a fleet copy,
    pinned by sha256 like the shipped variants."""
    import copy
    import hashlib

    import yaml
    from safetensors.torch import load_file, save_file

    from training.quantize import is_block_linear, roundtrip

    document = yaml.safe_load(manifest.read_text())
    for tier in document["spec"]["tiers"]:
        base = next(v for v in tier["variants"] if v["name"] == tier["default_variant"])
        source, target = manifest.parent / base["weights"], manifest.parent / "models" / tier[
            "name"] / name
        shutil.copytree(source, target)
        tensors = load_file(str(source / "model.safetensors"))
        for key, weight in tensors.items():
            if is_block_linear(key):
                tensors[key] = roundtrip(weight, bits)[0].contiguous()
        save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
        files = {f: hashlib.sha256((target / f).read_bytes()).hexdigest() for f in base["files"]}
        # A deep copy: a dict shared with the base variant would be written as a YAML alias,
        # which the document loader refuses (alias bombs).
        tier["variants"].append({**copy.deepcopy(base), "name": name,
                                 "weights": f"models/{tier['name']}/{name}", "files": files})
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import serving.fleet as fleet_mod
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.settings import StateDir
    from gates.port import GatewayServingPath
    from policies.policy import load_policy
    from store import Store

    root = tmp_path_factory.mktemp("gate-int")
    fleet_dir = root / "fleet"  # a copy: the tamper test must never touch the real fleet
    trained = REFERENCE_FLEET.is_file()
    if trained:
        shutil.copytree(REFERENCE_FLEET.parent, fleet_dir)
        manifest = fleet_dir / "fleet.yaml"
        _add_degraded_variant(manifest, DEGRADED_VARIANT, bits=2)
    else:
        from serving.testing import make_tiny_fleet

        manifest = make_tiny_fleet(fleet_dir)
    policy_file = root / "active.yaml"
    policy_file.write_text(ACTIVE_POLICY)
    state = StateDir(root / "state")
    initialise_state(state, fleet_file=manifest, policy_file=policy_file)
    store = Store.open(state.store_url())
    handle = fleet_mod.start_fleet(manifest, store_url=state.store_url(), http_port=0,
                                   spans_path=state.spans_dir / "gate-int.jsonl")
    try:
        yield {"state": state, "store": store, "fleet": load_fleet(manifest), "trained": trained,
               "manifest": manifest, "handle": handle, "active": load_policy(policy_file),
               "serving": GatewayServingPath(handle.url)}
    finally:
        handle.shutdown()
        store.close()


def _gate(env, candidate, suite, **options):
    return run_gates(candidate=candidate, baseline=env["active"], fleet=env["fleet"],
                     manifest_dir=env["manifest"].parent, suite=suite, serving=env["serving"],
                     options=GateOptions(**options), progress=print)


def _stored_candidate(env, **changes):
    """The active policy with ``changes``, stored under the next free version (tests in this
    module share one store)."""
    from policies.policy import Policy

    evolved = env["active"].evolve(author="gate-integration", **changes)
    document = evolved.model_dump(mode="json", by_alias=True)
    document["metadata"]["version"] = max(r.policy.metadata.version
                                          for r in env["store"].list_policies()) + 1
    candidate = Policy.model_validate(document)
    env["store"].put_policy(candidate)
    return candidate


def test_active_policy_passes_against_itself(env):
    from controlplane.loop.gating import run_gate_command
    from gates.suite import save_suite

    path = env["state"].root / "self.yaml"
    path.write_text(env["active"].to_yaml())
    suite_file = save_suite(reference_suite(SELF_SUITE_PER_CELL), env["state"].root / "s.json")
    result = run_gate_command(env["state"], path, url=env["handle"].url, suite_path=suite_file,
                              fleet_path=env["manifest"], echo=print)
    assert result.report.overall is Phase.PASSED, [r.line() for r in result.report.results]
    assert result.exit_code == 0 and result.evidence_path.is_file()
    stored = env["store"].get_evidence(result.evidence_sha256)
    assert stored.bundle["bundle_hash"] == result.bundle["bundle_hash"]


def test_response_cache_serves_what_a_fresh_generation_gives(env):
    candidate = _stored_candidate(env, cache={"response": {"enabled": True}})
    report = _gate(env, candidate, reference_suite(1), cache_sample=10)
    cache = next(r for r in report.results if r.name == "cache_safety")
    assert cache.phase is Phase.PASSED, cache.message
    assert cache.stats["cache_hits"] >= 10


def test_quantized_variant_that_degrades_quality_is_failed(env):
    if not env["trained"]:
        pytest.skip("random-weight fleet: quality is zero on every variant; needs the trained "
                    "reference fleet")
    degraded = {t.name: DEGRADED_VARIANT for t in env["fleet"].tiers}
    candidate = _stored_candidate(env, quantization=degraded)
    env["handle"].ensure_variants(candidate)
    report = _gate(env, candidate, reference_suite(SELF_SUITE_PER_CELL))
    quality = next(r for r in report.results if r.name == "quality_non_inferiority")
    assert quality.phase is Phase.FAILED, quality.message
    assert "pass rate" in quality.message and quality.stats["difference"] < 0
    assert report.overall is not Phase.PASSED


def test_tampered_weight_file_is_failed_naming_it(env):
    variant = env["fleet"].tiers[0].variant()
    from contracts.manifest import resolve_path

    target = resolve_path(variant.weights, env["manifest"].parent) / min(variant.files)
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\0")
        report = _gate(env, env["active"], reference_suite(1))
        pinned = next(r for r in report.results if r.name == "pinned_weights")
        assert pinned.phase is Phase.FAILED and str(target) in pinned.message
    finally:
        target.write_bytes(original)


def test_hanging_verifier_is_killed_and_reported(env):
    case = SuiteCase(id="hang", family="expr_eval", difficulty=1, prompt="eval: 1+1\n=",
                     expected="2", verifier=ProgramVerifier(source="while True:\n    pass\n",
                                                            timeout_s=3, cpu_s=1))
    result = run_case(env["serving"], case, env["active"], task_id="gate-int-hang")
    assert result.status == "error" and "killed" in result.reason


def test_rerun_gives_the_same_bundle_hash(env):
    suite = reference_suite(2)
    first = build_bundle(_gate(env, env["active"], suite))
    second = build_bundle(_gate(env, env["active"], suite))
    assert first["timestamps"] != second["timestamps"]
    assert first["bundle_hash"] == second["bundle_hash"]
