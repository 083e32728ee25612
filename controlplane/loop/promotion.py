"""Promotion and rollback: one store transaction each, so exactly one policy is active.

The store moves the active pointer, the proposal's state and the audit entry together; the
gateway polls the active pointer and reloads without a restart. These functions choose what
to activate; they never write the pointer any other way.
"""

from __future__ import annotations

from typing import Any

from contracts.errors import PermanentError
from store import ActivationRecord, ProposalState

__all__ = ["NothingToRollBack", "active_proposal", "promote_approved", "rollback_active"]


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


def rollback_active(store: Any, *, actor: str, reason: str) -> ActivationRecord:
    """Restore the policy that was active before the current one."""
    proposal = active_proposal(store)
    if proposal is not None:
        return store.rollback(proposal.proposal_id, actor=actor, reason=reason)
    previous = store.previous_active()
    if previous is None:
        raise NothingToRollBack("no earlier active policy to roll back to")
    return store.activate(previous.version, actor=actor, reason=reason)
