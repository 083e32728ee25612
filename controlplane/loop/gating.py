"""Gate one stored proposal through the real serving path and record the verdict.

Fail closed: the proposal always leaves here gated. When the run itself cannot happen (the
fleet will not start, the gateway is unreachable, a bug) the proposal is gated ERROR with an
evidence bundle that says why, so it is never promoted by itself.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GATE_ACTOR", "gate_proposal", "register_fleet"]

GATE_ACTOR = "autopilot-gate"
# Fleets started in this process, by gateway URL: the gates ask the one they run through
# to deploy what a candidate needs (a variant or adapter not serving yet).
_FLEETS: dict[str, Any] = {}


def register_fleet(handle: Any) -> None:
    _FLEETS[handle.url.rstrip("/")] = handle


def gate_proposal(state: Any, proposal_id: str, *, gateway_url: str | None,
                  dry_run: bool = False, echo: Callable[[str], None] = print,
                  serving: Any = None, suite: Any = None) -> str:
    """Run every gate for the proposal's candidate against its baseline; returns the verdict."""
    from gates.command import evidence_dir
    from store import Store

    store = Store.open(state.store_url())
    try:
        proposal = store.get_proposal(proposal_id)
        if proposal.gate_verdict is not None:
            return proposal.gate_verdict.value  # a rerun never gates twice
        try:
            return _run(state, store, proposal, gateway_url=gateway_url, dry_run=dry_run,
                        echo=echo, serving=serving, suite=suite)
        except Exception as exc:  # noqa: BLE001 - fail closed, with the reason on record
            reason = f"{type(exc).__name__}: {exc}"
            echo(f"gates could not run for {proposal_id}: {reason}")
            bundle = {"schema": "autopilot/evidence/v1", "overall": "ERROR",
                      "candidate": {"version": proposal.candidate_version,
                                    "content_hash": proposal.candidate_hash},
                      "baseline": {"version": proposal.baseline_version,
                                   "content_hash": proposal.baseline_hash},
                      "gates": [{"name": "runner", "phase": "ERROR", "message": reason}],
                      "error": traceback.format_exc(limit=8),
                      "timestamps": {"failed": datetime.now(UTC).isoformat()}}
            if not dry_run:
                store.record_gate(proposal_id, "ERROR", actor=GATE_ACTOR, evidence=bundle,
                                  reason=reason)
            directory = evidence_dir(state)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"error-{proposal_id}.json").write_text(
                __import__("json").dumps(bundle, indent=2), encoding="utf-8")
            return "ERROR"
    finally:
        store.close()


def _run(state: Any, store: Any, proposal: Any, *, gateway_url: str | None, dry_run: bool,
         echo: Callable[[str], None], serving: Any, suite: Any) -> str:
    from contracts.manifest import load_fleet
    from gates.command import evidence_dir
    from gates.evidence import build_bundle, record_evidence
    from gates.runner import run_gates
    from gates.suite import load_reference_suite

    manifest_path = Path(state.fleet_path)
    fleet = load_fleet(manifest_path)
    candidate = store.get_policy(proposal.candidate_version).policy
    baseline = store.get_policy(proposal.baseline_version).policy
    suite = suite if suite is not None else load_reference_suite()
    handle = None
    try:
        if serving is None:
            from gates.port import GatewayServingPath

            if gateway_url is None:
                from serving.fleet import start_fleet

                echo("starting a fleet for the gates (no gateway URL given)")
                spans = Path(state.spans_dir) / (
                    f"gate-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.jsonl")
                handle = start_fleet(manifest_path, store_url=state.store_url(),
                                     spans_path=spans)
                gateway_url = handle.url
                handle.ensure_variants(candidate)
            elif gateway_url.rstrip("/") in _FLEETS:
                _FLEETS[gateway_url.rstrip("/")].ensure_variants(candidate)
            else:
                _ensure_remote_variants(gateway_url, candidate.metadata.version)
            serving = GatewayServingPath(gateway_url)
        echo(f"gating {proposal.proposal_id}: v{candidate.metadata.version} against "
             f"v{baseline.metadata.version} on {len(suite.cases)} cases")
        report = run_gates(candidate=candidate, baseline=baseline, fleet=fleet,
                           manifest_dir=manifest_path.parent, suite=suite, serving=serving,
                           dry_run=dry_run, progress=echo)
    finally:
        if handle is not None:
            handle.shutdown()
    bundle = build_bundle(report, fleet_manifest_path=manifest_path)
    record_evidence(store, bundle, evidence_dir=evidence_dir(state), actor=GATE_ACTOR,
                    proposal_id=proposal.proposal_id)
    for result in report.results:
        echo(f"  {result.line()}")
    return report.overall.value


def _ensure_remote_variants(gateway_url: str, policy_version: int) -> None:
    """Ask a running gateway to deploy what a stored policy version needs (idempotent)."""
    from serving.client import GatewayClient

    client = GatewayClient(gateway_url)
    ensure = getattr(client, "ensure_policy", None)
    if ensure is not None:
        ensure(policy_version)
