"""``autopilot gate``: the command's logic (the click command in controlplane/cli.py is thin).

Stores the candidate as a policy version if it is not stored yet, runs every gate against
the active policy through a running gateway (``url``) or a fleet it starts for the run,
writes the evidence bundle to the store and to ``reports/evidence/<sha256>.json``, and
returns whether the candidate may go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.errors import PermanentError
from gates.runner import GateOptions, GateReport

__all__ = [
    "GateCommandResult",
    "evidence_dir",
    "plan_candidate_version",
    "run_gate_command",
    "store_candidate",
]

ACTOR = "autopilot-gate"


def evidence_dir(state: Any) -> Path:
    return Path(state.reports_dir) / "evidence"


def plan_candidate_version(stored: Sequence[tuple[int, str]], version: int, content_hash: str
                           ) -> tuple[str, int]:
    """How to store a candidate, given the stored ``(version, content_hash)`` pairs:
    ``("reuse", v)`` when some version already has this spec, ``("store", version)`` when
    its version number is free, else ``("renumber", max + 1)`` (versions are immutable)."""
    for v, h in stored:
        if h == content_hash:
            return "reuse", v
    taken = {v for v, _ in stored}
    if version not in taken:
        return "store", version
    return "renumber", max(taken) + 1


def store_candidate(store: Any, candidate: Any, *, baseline_version: int) -> tuple[Any, str]:
    """The stored policy for ``candidate`` (same spec) and a line saying what happened."""
    from policies.policy import Policy

    stored = [(r.version, r.content_hash) for r in store.list_policies()]
    action, version = plan_candidate_version(stored, candidate.metadata.version,
                                             candidate.content_hash)
    if action == "reuse":
        return store.get_policy(version).policy, f"candidate spec is stored as v{version}"
    if action == "renumber":
        data = candidate.model_dump(mode="json", by_alias=True)
        data["metadata"].update(version=version, parent_version=baseline_version)
        candidate = Policy.model_validate(data)
        note = (f"the file's version is taken by another spec: stored as v{version} "
                f"(parent v{baseline_version})")
    else:
        note = f"stored candidate as v{version}"
    store.put_policy(candidate, actor=ACTOR)
    return candidate, note


@dataclass(frozen=True)
class GateCommandResult:
    report: GateReport
    bundle: dict[str, Any]
    evidence_sha256: str
    evidence_path: Path
    notes: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        return 1 if self.report.blocking else 0


def run_gate_command(
    state: Any,
    candidate_path: str | Path,
    *,
    suite_path: str | Path | None = None,
    suite_hash: str | None = None,
    url: str | None = None,
    fleet_path: str | Path | None = None,
    dry_run: bool = False,
    proposal_id: str | None = None,
    options: GateOptions | None = None,
    echo: Callable[[str], None] = print,
    serving: Any = None,
) -> GateCommandResult:
    """Everything ``autopilot gate`` does. ``serving`` overrides the serving path (tests)."""
    from contracts.manifest import load_fleet
    from gates.evidence import build_bundle, record_evidence
    from gates.runner import run_gates
    from gates.suite import load_reference_suite, load_suite
    from policies.policy import load_policy, validate_against_fleet
    from store import Store

    manifest_path = Path(fleet_path) if fleet_path else Path(state.fleet_path)
    fleet = load_fleet(manifest_path)
    candidate = load_policy(Path(candidate_path))
    validate_against_fleet(candidate, fleet)
    suite = (load_suite(Path(suite_path), expected_hash=suite_hash) if suite_path
             else load_reference_suite())
    store = Store.open(state.store_url())
    try:
        active = store.active_policy()
        if active is None:
            raise PermanentError("no active policy to gate against: run `autopilot init`")
        candidate, note = store_candidate(store, candidate, baseline_version=active.version)
        notes = [note,
                 f"baseline: active policy v{active.version} ({active.content_hash[:12]})",
                 (f"suite: {suite.metadata.name} ({len(suite.cases)} cases, "
                  f"{suite.content_hash[:12]})")]
        for line in notes:
            echo(line)
        handle = None
        try:
            if serving is None:
                from gates.port import GatewayServingPath

                try:
                    if url is None:
                        echo(f"starting the fleet from {manifest_path} (no --url given)")
                        handle = _start_fleet(state, manifest_path)
                        url = handle.url
                    if handle is not None:
                        handle.ensure_variants(candidate)
                    serving = GatewayServingPath(url)
                except Exception as exc:  # noqa: BLE001 - fail closed: every run gate ERRORs
                    echo(f"serving path unavailable: {type(exc).__name__}: {exc}")
                    serving = _Unavailable(f"serving path unavailable: "
                                           f"{type(exc).__name__}: {exc}")
            report = run_gates(candidate=candidate, baseline=active.policy, fleet=fleet,
                               manifest_dir=manifest_path.parent, suite=suite, serving=serving,
                               options=options or GateOptions(), dry_run=dry_run,
                               progress=echo)
        finally:
            if handle is not None:
                handle.shutdown()
        bundle = build_bundle(report, fleet_manifest_path=manifest_path)
        recorded = record_evidence(store, bundle, evidence_dir=evidence_dir(state),
                                   actor=ACTOR, proposal_id=proposal_id)
    finally:
        store.close()
    return GateCommandResult(report, bundle, recorded.sha256, recorded.path, tuple(notes))


def _start_fleet(state: Any, manifest_path: Path) -> Any:
    try:
        from serving.fleet import start_fleet
    except ImportError as exc:
        raise PermanentError(f"serving.fleet is not available ({exc}): pass --url of a "
                             "running gateway") from exc
    spans = Path(state.spans_dir) / f"gate-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.jsonl"
    return start_fleet(manifest_path, store_url=state.store_url(), spans_path=spans)


class _Unavailable:
    """A serving path that could not be set up: every call fails with the reason, so the
    gates that need serving report ERROR and the evidence still records the run."""

    def __init__(self, reason: str):
        self.reason = reason

    def complete(self, case: Any, **_kwargs: Any) -> Any:
        raise PermanentError(self.reason)
