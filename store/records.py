"""The values the store hands back: frozen records, the proposal states and gate verdicts."""

from __future__ import annotations

import hashlib
import json
import math
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
    "AnomalyRecord",
    "ApprovalRecord",
    "AuditEntry",
    "AuditVerification",
    "CalibrationRecord",
    "Decision",
    "EvidenceRecord",
    "GateVerdict",
    "LeaseRecord",
    "PolicyRecord",
    "ProposalRecord",
    "ProposalState",
    "RolloutRecord",
    "proposal_id_for",
    "realised_gap",
]


class ProposalState(str, Enum):
    PROPOSED = "proposed"
    GATED = "gated"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    CANARY = "canary"  # serving a share of new tasks beside the active policy
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
    # Gates that FAILED or ERRORed reject the proposal with their reason (never promoted).
    ProposalState.GATED: frozenset({ProposalState.AWAITING_APPROVAL, ProposalState.REJECTED}),
    ProposalState.AWAITING_APPROVAL: frozenset({ProposalState.APPROVED, ProposalState.REJECTED}),
    ProposalState.APPROVED: frozenset({ProposalState.ACTIVE, ProposalState.CANARY}),
    # A canary ends promoted (active) or stopped (rolled back; the active policy never moved).
    ProposalState.CANARY: frozenset({ProposalState.ACTIVE, ProposalState.ROLLED_BACK}),
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
class RolloutRecord:
    """A progressive delivery: ``candidate_version`` serves ``share`` of new tasks (step
    ``step``) beside ``baseline_version``; ``state`` running, completed or aborted."""

    proposal_id: str
    candidate_version: int
    baseline_version: int
    share: float
    step: int
    state: str
    started_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"proposal_id": self.proposal_id, "candidate_version": self.candidate_version,
                "baseline_version": self.baseline_version, "share": self.share,
                "step": self.step, "state": self.state,
                "started_at": self.started_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}


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
    """``entries_checked`` counts the entries examined, the failing one included.

    ``first_bad_seq`` and ``reason`` are the chain's first break (``reason`` is the first
    problem when the chain holds); ``problems`` lists every one found: the chain's break, each
    anchor the log no longer holds, each disagreement of the state tables with the log
    replayed. ``anchors_checked`` counts the anchors compared."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    problems: tuple[str, ...] = ()
    anchors_checked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries_checked": self.entries_checked,
                "first_bad_seq": self.first_bad_seq, "reason": self.reason,
                "problems": list(self.problems), "anchors_checked": self.anchors_checked}


def realised_gap(predicted: float, low: float | None, high: float | None, realised: float,
                 realised_low: float | None = None, realised_high: float | None = None
                 ) -> float | None:
    """How far a realised change fell from its prediction, in units of the predicted
    interval's half-width on that side, allowing the realised measurement's own noise
    (``<= 1``: inside; None without a predicted interval).

    The predicted interval is for the change's expected value; the realised figure is that
    value plus its own sampling noise (a day of tasks), whose interval the verify look
    measures. Both errors add: a realised point is inside when its distance from the
    prediction is within ``sqrt(h_pred**2 + h_real**2)`` (the half-widths on the facing
    sides), so a tight prediction is not called a miss for a day's noise it could never
    predict. Returned: ``sqrt(max(d**2 - h_real**2, 0)) / h_pred``, the inflation the
    prediction alone needed. Without a realised interval ``h_real`` is 0 (the plain rule).
    """
    if low is None or high is None:
        return None
    half = (high - predicted) if realised >= predicted else (predicted - low)
    distance = abs(realised - predicted)
    if not math.isfinite(half):
        return 0.0
    noise = 0.0
    if realised_low is not None and realised_high is not None:
        # the side of the realised interval that faces the prediction
        noise = (realised_high - realised) if realised < predicted else (realised - realised_low)
        noise = noise if math.isfinite(noise) and noise > 0 else 0.0
    need = math.sqrt(max(distance ** 2 - noise ** 2, 0.0))
    if half <= 0:
        return 0.0 if need == 0 else math.inf
    return need / half


@dataclass(frozen=True)
class CalibrationRecord:
    """One verify look at a promoted change: predicted against realised.

    Figures are relative changes of cost per Green PR (-0.19 is 19% cheaper). ``predicted``
    and its interval are what the proposal recorded (at ``level``, already widened by
    ``widen``); ``realised`` and its interval come from the verify look's delta-method
    statistics. ``inside`` says whether the realised point fell inside the predicted
    interval, allowing the realised figure's own noise (``realised_gap``; None when the
    proposal recorded no interval).
    """

    record_id: int
    proposal_id: str
    lever: str
    look: int
    window: str
    realised_window: str
    level: float | None
    predicted: float
    predicted_low: float | None
    predicted_high: float | None
    realised: float
    realised_low: float | None
    realised_high: float | None
    inside: bool | None
    widen: float
    outcome: str
    baseline_tasks: int
    candidate_tasks: int
    recorded_at: datetime

    @property
    def miss(self) -> float | None:
        """How far outside the predicted interval the realised point fell, in units of the
        interval's half-width on that side, allowing the realised figure's own noise
        (``realised_gap``; 0.0 inside; None without an interval)."""
        gap = realised_gap(self.predicted, self.predicted_low, self.predicted_high,
                           self.realised, self.realised_low, self.realised_high)
        return None if gap is None else max(gap - 1.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id, "proposal_id": self.proposal_id, "lever": self.lever,
            "look": self.look, "window": self.window, "realised_window": self.realised_window,
            "level": self.level, "predicted": self.predicted,
            "predicted_low": self.predicted_low, "predicted_high": self.predicted_high,
            "realised": self.realised, "realised_low": self.realised_low,
            "realised_high": self.realised_high, "inside": self.inside, "miss": self.miss,
            "widen": self.widen, "outcome": self.outcome,
            "baseline_tasks": self.baseline_tasks, "candidate_tasks": self.candidate_tasks,
            "recorded_at": self.recorded_at.isoformat(),
        }


@dataclass(frozen=True)
class AnomalyRecord:
    """One recorded spend anomaly (``economics.anomalies``): a period of one key whose spend
    exceeded ``threshold_usd`` (the rule's multiple of ``baseline_usd``, or its floor)."""

    anomaly_id: int
    granularity: str  # "hour" or "day"
    scope: str  # "team", "tier" or "family"
    key: str
    period_start: datetime
    spend_usd: float
    baseline_usd: float
    threshold_usd: float
    history: int
    detected_by: str
    detected_at: datetime

    @property
    def ratio(self) -> float | None:
        return self.spend_usd / self.baseline_usd if self.baseline_usd > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "anomaly_id": self.anomaly_id, "granularity": self.granularity,
            "scope": self.scope, "key": self.key,
            "period_start": self.period_start.isoformat(), "spend_usd": self.spend_usd,
            "baseline_usd": self.baseline_usd, "threshold_usd": self.threshold_usd,
            "ratio": self.ratio, "history": self.history, "detected_by": self.detected_by,
            "detected_at": self.detected_at.isoformat(),
        }
