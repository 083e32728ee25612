"""Promotion and rollback: one store transaction each, so exactly one policy is active.

The store moves the active pointer, the proposal's state and the audit entry together; the
gateway polls the active pointer and reloads without a restart. These functions choose what
to activate; they never write the pointer any other way.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import PermanentError
from store import ActivationRecord, ProposalState

__all__ = ["NothingToRollBack", "active_proposal", "last_good_version", "promote_approved",
           "rollback_active"]


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


def promote_approved(store: Any, proposal_id: str, *, actor: str, reason: str) -> ActivationRecord:
    """Activate an approved proposal's candidate (idempotent: an active one is left as is)."""
    proposal = store.get_proposal(proposal_id)
    if proposal.state in (ProposalState.ACTIVE, ProposalState.VERIFIED):
        return next(a for a in store.activation_history() if a.proposal_id == proposal_id
                    and a.version == proposal.candidate_version)
    return store.promote(proposal_id, actor=actor, reason=reason)


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
