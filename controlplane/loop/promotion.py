"""Promotion and rollback: one store transaction each, so exactly one policy is active.

The store moves the active pointer, the proposal's state and the audit entry together; the
gateway polls the active pointer and reloads without a restart. These functions choose what
to activate; they never write the pointer any other way.

No promotion without the proposal's own evidence: ``promote_approved`` reads the bundle the
proposal's verdict was recorded with and refuses (``PromotionRefused``, the active policy
unchanged) unless it judged this candidate against this baseline on the pinned gate suite,
outside a dry run, with the verdict recorded (``evidence_problems``); the store checks the
candidate and baseline again in the promotion's transaction, and refuses there too a
proposal whose approval, state or candidate policy does not match the audit log (a forged
or edited approval row is never promoted; ``store.replay.proposal_problems``).
"""

from __future__ import annotations

from typing import Any

from contracts.errors import PermanentError
from store import ActivationRecord, PromotionRefused, ProposalState

__all__ = ["NothingToRollBack", "active_proposal", "evidence_problems", "last_good_version",
           "promote_approved", "require_own_evidence", "rollback_active"]


class NothingToRollBack(PermanentError):
    """There is no earlier policy to restore."""


def active_proposal(store: Any) -> Any | None:
    """The proposal whose candidate is the active policy now, if it came from one."""
    active = store.active_policy()
    if active is None:
        return None
    for p in store.list_proposals(ProposalState.ACTIVE):
        if p.candidate_version == active.version:
            return p
    return None


def evidence_problems(proposal: Any, bundle: Any, *, suite_hash: str | None) -> list[str]:
    """Why ``bundle`` does not back promoting ``proposal`` (pure): it must be a gate
    evidence bundle of this candidate against this baseline on the suite ``suite_hash``
    (None: any suite it names), not a dry run's, whose overall verdict is the one recorded
    on the proposal and not FAILED or ERROR."""
    from gates.evidence import binding_problems

    problems = binding_problems(bundle, candidate_hash=proposal.candidate_hash,
                                baseline_hash=proposal.baseline_hash, suite_hash=suite_hash)
    verdict = getattr(proposal.gate_verdict, "value", proposal.gate_verdict)
    overall = bundle.get("overall") if isinstance(bundle, dict) else None
    if verdict is None:
        problems.append("the proposal has no gate verdict")
    elif overall != verdict:
        problems.append(f"its overall verdict is {overall}, but {verdict} is recorded")
    if overall in ("FAILED", "ERROR"):
        problems.append(f"the gates {overall}")
    return problems


def _pinned_suite_hash() -> str:
    from gates.suite import REFERENCE_SUITE_SHA256

    return REFERENCE_SUITE_SHA256


def promote_approved(store: Any, proposal_id: str, *, actor: str, reason: str,
                     suite_hash: str | None = None) -> ActivationRecord:
    """Activate an approved proposal's candidate (idempotent: an active one is left as is).

    Refused (``PromotionRefused``; the active policy stays) unless the proposal's recorded
    evidence bundle is its own (``evidence_problems``), judged on the suite ``suite_hash``
    (default: the pinned reference suite, ``gates.suite.REFERENCE_SUITE_SHA256``)."""
    proposal = store.get_proposal(proposal_id)
    if proposal.state in (ProposalState.ACTIVE, ProposalState.VERIFIED):
        return next(a for a in store.activation_history() if a.proposal_id == proposal_id
                    and a.version == proposal.candidate_version)
    require_own_evidence(store, proposal, suite_hash=suite_hash)
    return store.promote(proposal_id, actor=actor, reason=reason)


def require_own_evidence(store: Any, proposal: Any, *, suite_hash: str | None = None) -> None:
    """Raise ``PromotionRefused`` unless ``proposal``'s recorded evidence bundle is its own
    (``evidence_problems``) on the suite ``suite_hash`` (default: the pinned reference
    suite). Whatever puts a candidate in front of traffic calls it first."""
    pid = proposal.proposal_id
    active = store.active_policy()
    stays = f"policy v{active.version} stays active" if active else "nothing is activated"
    if proposal.evidence_hash is None:
        raise PromotionRefused(
            f"proposal {pid} has no evidence bundle: never promoted without the gates' own "
            f"evidence (run `autopilot gate --proposal {pid}`); {stays}")
    bundle = store.get_evidence(proposal.evidence_hash).bundle
    problems = evidence_problems(proposal, bundle,
                                 suite_hash=suite_hash or _pinned_suite_hash())
    if problems:
        raise PromotionRefused(
            f"proposal {pid}: its evidence bundle {proposal.evidence_hash[:12]} does not back "
            f"promoting candidate {proposal.candidate_hash[:12]} over baseline "
            f"{proposal.baseline_hash[:12]}: {'; '.join(problems)}; {stays}")


def last_good_version(history: Any, *, current: int, rolled_back: set[int]) -> int | None:
    """The rollback target (pure): the most recently active version before ``current`` that
    was never rolled back. ``history`` is the activation history, newest first."""
    for record in history:
        for version in (record.version, record.previous_version):
            if version is not None and version != current and version not in rolled_back:
                return version
    return None


def rollback_active(store: Any, *, actor: str, reason: str) -> ActivationRecord:
    """Restore the last good policy: the active proposal's baseline when the active policy
    came from one, else the most recently active version that was never rolled back (a
    second rollback never brings back the policy the first one removed)."""
    proposal = active_proposal(store)
    if proposal is not None:
        return store.rollback(proposal.proposal_id, actor=actor, reason=reason)
    active = store.active_policy()
    rolled_back = {p.candidate_version for p in store.list_proposals(ProposalState.ROLLED_BACK)}
    target = last_good_version(store.activation_history(),
                               current=active.version if active else -1,
                               rolled_back=rolled_back)
    if target is None:
        raise NothingToRollBack("no earlier good policy to roll back to (every earlier "
                                "active version was rolled back)")
    return store.activate(target, actor=actor, reason=reason)
