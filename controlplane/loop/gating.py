"""The one gating adapter: ``autopilot gate`` and the nightly flow both gate through here.

It runs every gate of ``gates`` for a stored candidate against its baseline through a
serving path, builds the evidence bundle (one schema, ``gates.evidence.SCHEMA``), records
it in the store, on disk and in the audit log, and returns the verdict.

Fail closed: whatever goes wrong (the fleet will not start, the gateway is unreachable, a
bug), the candidate leaves here with an ERROR bundle that says why, recorded like any other
bundle, so it is never promoted by itself. Gate limits are the baseline's
(``gates.runner``): a candidate never sets the bar it is judged by.

Where the gates get their serving path is a port (``GateServing``), chosen once by the
caller: a fleet this process started (the demo hands its handle over; the gates deploy the
variants and adapters a candidate needs on it), a fleet started for this run and shut down
after, a gateway already running at a URL (it must already serve what the candidate
names), or a given serving path (tests, in-process).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from contracts.errors import PermanentError

__all__ = [
    "GATE_ACTOR",
    "FleetForTheRun",
    "FleetInProcess",
    "GateServing",
    "GatingOutcome",
    "GivenServing",
    "RunningGateway",
    "evidence_dir",
    "gate_candidate",
    "gate_lines",
    "gate_proposal",
    "plan_candidate_version",
    "proposal_mismatch",
    "run_gate_command",
    "serving_for",
    "store_candidate",
]

GATE_ACTOR = "autopilot-gate"
Echo = Callable[[str], None]


def evidence_dir(state: Any) -> Path:
    return Path(state.reports_dir) / "evidence"


# ----------------------------------------------------------------------------- the port
class GateServing(Protocol):
    """Where the gates run: ``open(candidate)`` yields a ``gates.ServingPath`` that serves
    the candidate and its baseline, and releases what it started on exit."""

    def open(self, candidate: Any, *, echo: Echo) -> Any: ...  # a context manager


@dataclass(frozen=True)
class GivenServing:
    """A serving path the caller built (tests: ``gates.fakes.FakeServingPath``)."""

    serving: Any

    @contextmanager
    def open(self, candidate: Any, *, echo: Echo) -> Iterator[Any]:
        yield self.serving


@dataclass(frozen=True)
class FleetInProcess:
    """A fleet this process started (``serving.fleet.FleetHandle``): the gates deploy what
    the candidate needs on it (idempotent) and run through its gateway."""

    handle: Any

    @contextmanager
    def open(self, candidate: Any, *, echo: Echo) -> Iterator[Any]:
        from gates.port import GatewayServingPath

        deployed = self.handle.ensure_variants(candidate)
        if deployed:
            echo(f"deployed for the gates: {', '.join(deployed)}")
        yield GatewayServingPath(self.handle.url)


@dataclass(frozen=True)
class RunningGateway:
    """A gateway already running elsewhere. The gates cannot deploy on it: a variant or
    adapter it does not serve makes the cases that need it fail, so those gates ERROR."""

    url: str

    @contextmanager
    def open(self, candidate: Any, *, echo: Echo) -> Iterator[Any]:
        from gates.port import GatewayServingPath

        yield GatewayServingPath(self.url)


@dataclass(frozen=True)
class FleetForTheRun:
    """Start the fleet for this run only (no gateway given) and shut it down after."""

    manifest_path: Path
    store_url: str
    spans_dir: Path

    @contextmanager
    def open(self, candidate: Any, *, echo: Echo) -> Iterator[Any]:
        from gates.port import GatewayServingPath
        from serving.fleet import start_fleet

        echo(f"starting the fleet from {self.manifest_path} for the gates")
        spans = Path(self.spans_dir) / (
            f"gate-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.jsonl")
        handle = start_fleet(self.manifest_path, store_url=self.store_url, spans_path=spans)
        try:
            handle.ensure_variants(candidate)
            yield GatewayServingPath(handle.url)
        finally:
            handle.shutdown()


def serving_for(state: Any, *, gateway_url: str | None = None, fleet: Any = None,
                serving: Any = None, manifest_path: Path | None = None) -> GateServing:
    """The port for a caller's options: a given path beats a fleet handle beats a URL;
    with none of them, a fleet is started for the run."""
    if serving is not None:
        return GivenServing(serving)
    if fleet is not None:
        return FleetInProcess(fleet)
    if gateway_url is not None:
        return RunningGateway(gateway_url)
    return FleetForTheRun(Path(manifest_path or state.fleet_path), state.store_url(),
                          Path(state.spans_dir))


# ------------------------------------------------------------------- storing candidates
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


def store_candidate(store: Any, candidate: Any, *, baseline_version: int,
                    actor: str = GATE_ACTOR) -> tuple[Any, str]:
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
    store.put_policy(candidate, actor=actor)
    return candidate, note


# ------------------------------------------------------------------------------ gating
@dataclass(frozen=True)
class GatingOutcome:
    verdict: str  # PASSED | FAILED | ERROR | INCONCLUSIVE
    bundle: dict[str, Any]
    evidence_sha256: str
    evidence_path: Path
    report: Any = None  # gates.GateReport; None when the run itself could not happen

    @property
    def blocking(self) -> bool:
        return self.verdict != "PASSED" and not self.bundle.get("dry_run", False)


def gate_candidate(state: Any, store: Any, *, candidate: Any, baseline: Any,
                   serving: GateServing, suite: Any = None, options: Any = None,
                   proposal_id: str | None = None, dry_run: bool = False,
                   manifest_path: Path | None = None, echo: Echo = print) -> GatingOutcome:
    """Every gate for a stored ``candidate`` against ``baseline``; the bundle is recorded
    (and, for a proposal outside a dry run, the verdict). Never raises for a failed run."""
    from gates.evidence import build_bundle, build_error_bundle, record_evidence

    manifest_path = Path(manifest_path or state.fleet_path)
    report = None
    try:
        report = _run(candidate, baseline, serving=serving, suite=suite, options=options,
                      dry_run=dry_run, manifest_path=manifest_path, echo=echo)
        bundle = build_bundle(report, fleet_manifest_path=manifest_path)
    except Exception as exc:  # noqa: BLE001 - fail closed, with the reason on record
        reason = f"{type(exc).__name__}: {exc}"
        echo(f"gates could not run: {reason}")
        bundle = build_error_bundle(candidate=candidate, baseline=baseline, reason=reason,
                                    detail=traceback.format_exc(limit=8), dry_run=dry_run,
                                    fleet_manifest_path=manifest_path, suite=suite)
        report = None
    recorded = record_evidence(store, bundle, evidence_dir=evidence_dir(state),
                               actor=GATE_ACTOR, proposal_id=proposal_id)
    return GatingOutcome(bundle["overall"], bundle, recorded.sha256, recorded.path, report)


def _run(candidate: Any, baseline: Any, *, serving: GateServing, suite: Any, options: Any,
         dry_run: bool, manifest_path: Path, echo: Echo) -> Any:
    from contracts.manifest import load_fleet
    from gates.runner import GateOptions, run_gates
    from gates.suite import load_reference_suite

    fleet = load_fleet(manifest_path)
    suite = suite if suite is not None else load_reference_suite()
    with ExitStack() as stack:
        try:
            path = stack.enter_context(serving.open(candidate, echo=echo))
        except Exception as exc:  # noqa: BLE001 - the gates that need serving ERROR
            reason = f"serving path unavailable: {type(exc).__name__}: {exc}"
            echo(reason)
            path = _Unavailable(reason)
        echo(f"gating v{candidate.metadata.version} against v{baseline.metadata.version} "
             f"on {len(suite.cases)} cases")
        return run_gates(candidate=candidate, baseline=baseline, fleet=fleet,
                         manifest_dir=manifest_path.parent, suite=suite, serving=path,
                         options=options or GateOptions(), dry_run=dry_run, progress=echo)


class _Unavailable:
    """A serving path that could not be set up: every call fails with the reason, so the
    gates that need serving report ERROR while the pinned-weight check still runs, and the
    evidence records the run."""

    def __init__(self, reason: str):
        self.reason = reason

    def complete(self, case: Any, **_kwargs: Any) -> Any:
        raise PermanentError(self.reason)


def gate_proposal(state: Any, store: Any, proposal_id: str, *, serving: GateServing,
                  dry_run: bool = False, echo: Echo = print, suite: Any = None) -> str:
    """Gate a stored proposal's candidate against its baseline; returns the verdict. A
    proposal already gated keeps its verdict (a rerun never gates twice)."""
    proposal = store.get_proposal(proposal_id)
    if proposal.gate_verdict is not None:
        return proposal.gate_verdict.value
    candidate = store.get_policy(proposal.candidate_version).policy
    baseline = store.get_policy(proposal.baseline_version).policy
    echo(f"gating {proposal_id}")
    outcome = gate_candidate(state, store, candidate=candidate, baseline=baseline,
                             serving=serving, suite=suite, proposal_id=proposal_id,
                             dry_run=dry_run, echo=echo)
    for line in gate_lines(outcome.bundle):
        echo(f"  {line}")
    return outcome.verdict


def gate_lines(bundle: dict[str, Any]) -> list[str]:
    """One line per gate of a bundle, as people read them: name, phase, message."""
    return [f"{g['name']:<24} {g['phase']:<12} {g['message']}" for g in bundle["gates"]]


@dataclass(frozen=True)
class GateCommandResult:
    outcome: GatingOutcome
    notes: tuple[str, ...]

    @property
    def report(self) -> Any:
        return self.outcome.report

    @property
    def bundle(self) -> dict[str, Any]:
        return self.outcome.bundle

    @property
    def evidence_sha256(self) -> str:
        return self.outcome.evidence_sha256

    @property
    def evidence_path(self) -> Path:
        return self.outcome.evidence_path

    @property
    def exit_code(self) -> int:
        return 1 if self.outcome.blocking else 0


def proposal_mismatch(proposal: Any, *, candidate_hash: str, baseline: Any, suite: Any,
                      dry_run: bool) -> list[str]:
    """Why a gate run may not be recorded on ``proposal`` (pure): its candidate or baseline
    is not the proposal's, or (outside a dry run: a verdict) its suite is not the pinned
    reference suite a proposal's verdict is judged on. ``baseline`` is the stored active
    policy the run would judge against."""
    from gates.suite import REFERENCE_SUITE_SHA256

    problems = []
    if candidate_hash != proposal.candidate_hash:
        problems.append(f"the candidate file's spec hashes to {candidate_hash[:12]} but the "
                        f"proposal's candidate (v{proposal.candidate_version}) is "
                        f"{proposal.candidate_hash[:12]}")
    if baseline.content_hash != proposal.baseline_hash:
        problems.append(f"the gates would judge it against the active policy "
                        f"v{baseline.version} ({baseline.content_hash[:12]}) but the proposal's "
                        f"baseline is v{proposal.baseline_version} "
                        f"({proposal.baseline_hash[:12]})")
    if not dry_run and suite.content_hash != REFERENCE_SUITE_SHA256:
        problems.append(f"suite {suite.metadata.name!r} hashes to {suite.content_hash[:12]}, "
                        f"not the pinned reference suite {REFERENCE_SUITE_SHA256[:12]} a "
                        f"proposal's verdict is judged on (gate without --proposal to try "
                        f"another suite)")
    return problems


def run_gate_command(state: Any, candidate_path: str | Path, *,
                     suite_path: str | Path | None = None, suite_hash: str | None = None,
                     url: str | None = None, fleet_path: str | Path | None = None,
                     dry_run: bool = False, proposal_id: str | None = None,
                     options: Any = None, echo: Echo = print, serving: Any = None
                     ) -> GateCommandResult:
    """``autopilot gate``: store the candidate file as a policy version (if its spec is
    new), gate it against the active policy, record the evidence (and the verdict on
    ``proposal_id``). With ``proposal_id``, the run is refused before anything is stored
    or run unless it is that proposal's candidate, baseline and (for a verdict) the pinned
    suite (``proposal_mismatch``)."""
    from contracts.manifest import load_fleet
    from gates.suite import load_reference_suite, load_suite
    from policies.policy import load_policy, validate_against_fleet
    from store import Store

    manifest_path = Path(fleet_path) if fleet_path else Path(state.fleet_path)
    candidate = load_policy(Path(candidate_path))
    validate_against_fleet(candidate, load_fleet(manifest_path))
    suite = (load_suite(Path(suite_path), expected_hash=suite_hash) if suite_path
             else load_reference_suite())
    with Store.open(state.store_url()) as store:
        active = store.active_policy()
        if active is None:
            raise PermanentError("no active policy to gate against: run `autopilot init`")
        if proposal_id is not None:
            problems = proposal_mismatch(store.get_proposal(proposal_id),
                                         candidate_hash=candidate.content_hash, baseline=active,
                                         suite=suite, dry_run=dry_run)
            if problems:
                raise PermanentError(f"refusing to gate {candidate_path} for proposal "
                                     f"{proposal_id}: {'; '.join(problems)}")
        candidate, note = store_candidate(store, candidate, baseline_version=active.version)
        notes = (note,
                 f"baseline: active policy v{active.version} ({active.content_hash[:12]})",
                 (f"suite: {suite.metadata.name} ({len(suite.cases)} cases, "
                  f"{suite.content_hash[:12]})"))
        for line in notes:
            echo(line)
        port = serving_for(state, gateway_url=url, serving=serving,
                           manifest_path=manifest_path)
        outcome = gate_candidate(state, store, candidate=candidate, baseline=active.policy,
                                 serving=port, suite=suite, options=options,
                                 proposal_id=proposal_id, dry_run=dry_run,
                                 manifest_path=manifest_path, echo=echo)
    return GateCommandResult(outcome, notes)
