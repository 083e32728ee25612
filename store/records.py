"""The values the store hands back: frozen records, the proposal states and gate verdicts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from contracts.phase import Phase
from contracts.prediction import Prediction
from policies.policy import Policy

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ActivationRecord",
    "ApprovalRecord",
    "AuditEntry",
    "AuditVerification",
    "Decision",
    "EvidenceRecord",
    "GateVerdict",
    "LeaseRecord",
    "PolicyRecord",
    "ProposalRecord",
    "ProposalState",
    "proposal_id_for",
]


class ProposalState(str, Enum):
    PROPOSED = "proposed"
    GATED = "gated"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    ACTIVE = "active"
    VERIFIED = "verified"
    ROLLED_BACK = "rolled_back"


# A proposal's gate verdict is the gates' phase (one enum, defined in the contracts).
GateVerdict = Phase


class Decision(str, Enum):
    APPROVE = "approve"
    REJECT = "reject"


# The lifecycle, exactly: proposed -> gated -> awaiting_approval -> approved|rejected ->
# active -> verified|rolled_back. rejected, verified and rolled_back are terminal.
ALLOWED_TRANSITIONS: dict[ProposalState, frozenset[ProposalState]] = {
    ProposalState.PROPOSED: frozenset({ProposalState.GATED}),
    ProposalState.GATED: frozenset({ProposalState.AWAITING_APPROVAL}),
    ProposalState.AWAITING_APPROVAL: frozenset({ProposalState.APPROVED, ProposalState.REJECTED}),
    ProposalState.APPROVED: frozenset({ProposalState.ACTIVE}),
    ProposalState.REJECTED: frozenset(),
    ProposalState.ACTIVE: frozenset({ProposalState.VERIFIED, ProposalState.ROLLED_BACK}),
    ProposalState.VERIFIED: frozenset(),
    ProposalState.ROLLED_BACK: frozenset(),
}


def proposal_id_for(candidate_hash: str, baseline_hash: str, window: str) -> str:
    """Short and stable: the same candidate, baseline and window always give the same id."""
    digest = hashlib.sha256(f"{candidate_hash}{baseline_hash}{window}".encode()).hexdigest()
    return "P-" + digest[:10]


@dataclass(frozen=True)
class PolicyRecord:
    version: int
    content_hash: str
    parent_version: int | None
    author: str
    created: datetime
    stored_at: datetime
    yaml_text: str
    policy: Policy = field(repr=False, compare=False)


@dataclass(frozen=True)
class ActivationRecord:
    """One move of the active pointer (``policy history`` lists these, newest first)."""

    activation_id: int
    version: int
    previous_version: int | None
    actor: str
    reason: str
    proposal_id: str | None
    activated_at: datetime


@dataclass(frozen=True)
class ProposalRecord:
    proposal_id: str
    candidate_version: int
    baseline_version: int
    candidate_hash: str
    baseline_hash: str
    lever: str
    window: str
    predicted: Prediction = field(hash=False)
    state: ProposalState
    gate_verdict: GateVerdict | None
    evidence_hash: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EvidenceRecord:
    sha256: str
    candidate_hash: str
    proposal_id: str | None
    json_text: str = field(repr=False)
    stored_at: datetime

    @property
    def bundle(self) -> dict[str, Any]:
        return json.loads(self.json_text)


@dataclass(frozen=True)
class ApprovalRecord:
    proposal_id: str
    approver: str
    decision: Decision
    reason: str
    decided_at: datetime


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str
    payload: dict[str, Any] = field(hash=False)
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class AuditVerification:
    """``entries_checked`` counts the entries examined, the failing one included."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
