"""The autopilot's record: policy versions and the active pointer, proposals and their
lifecycle, gate evidence, approvals, leases, the calibration record (predicted against
realised per verify look), spend anomalies, and the hash-chained audit log.

SQLite under the state directory by default (``Store.for_state_dir``), PostgreSQL by URL
(``Store.open``). Rule violations raise ``StoreError`` subclasses (permanent); a busy or
unreachable database raises ``StoreBusy`` (transient).
"""

from store.database import DATABASE_FILENAME, Store, display_url
from store.errors import (
    DecisionAlreadyRecorded,
    EvidenceMismatch,
    IllegalTransition,
    NotFoundError,
    PolicyVersionConflict,
    PromotionRefused,
    SchemaVersionError,
    StoreBusy,
    StoreError,
    StoreIntegrityError,
)
from store.records import (
    ALLOWED_TRANSITIONS,
    ActivationRecord,
    AnomalyRecord,
    ApprovalRecord,
    AuditEntry,
    AuditVerification,
    CalibrationRecord,
    Decision,
    EvidenceRecord,
    GateVerdict,
    LeaseRecord,
    PolicyRecord,
    ProposalRecord,
    ProposalState,
    RolloutRecord,
    proposal_id_for,
)
from store.schema import SCHEMA_VERSION, register_migration

__all__ = [
    "ALLOWED_TRANSITIONS",
    "DATABASE_FILENAME",
    "SCHEMA_VERSION",
    "ActivationRecord",
    "AnomalyRecord",
    "ApprovalRecord",
    "AuditEntry",
    "AuditVerification",
    "CalibrationRecord",
    "Decision",
    "DecisionAlreadyRecorded",
    "EvidenceMismatch",
    "EvidenceRecord",
    "GateVerdict",
    "IllegalTransition",
    "LeaseRecord",
    "NotFoundError",
    "PolicyRecord",
    "PolicyVersionConflict",
    "PromotionRefused",
    "ProposalRecord",
    "ProposalState",
    "RolloutRecord",
    "SchemaVersionError",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreIntegrityError",
    "display_url",
    "proposal_id_for",
    "register_migration",
]
