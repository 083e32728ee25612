"""The autopilot's record: policy versions and the active pointer, proposals and their
lifecycle, gate evidence, approvals, leases, the calibration record (predicted against
realised per verify look), spend anomalies, the gateway's API keys (hashed; ``keys.py``),
the gateway's shared ledger (spend per task and team-day, task routes; ``ledger.py``),
and the hash-chained audit log, replayed against the state tables on verification and
anchored outside the database (``anchors.py``).

SQLite under the state directory by default (``Store.for_state_dir``), PostgreSQL by URL
(``Store.open``). Rule violations raise ``StoreError`` subclasses (permanent); a busy or
unreachable database raises ``StoreBusy`` (transient).
"""

from store.anchors import Anchor, AnchorError, parse_anchor_text, read_anchor_file
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
from store.keys import API_KEY_PREFIX, ApiKeyRecord, key_id_of
from store.ledger import SCOPE_TASK, SCOPE_TEAM, RouteRow, SpendRow
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
    "API_KEY_PREFIX",
    "DATABASE_FILENAME",
    "SCHEMA_VERSION",
    "SCOPE_TASK",
    "SCOPE_TEAM",
    "ActivationRecord",
    "Anchor",
    "AnchorError",
    "AnomalyRecord",
    "ApiKeyRecord",
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
    "RouteRow",
    "SchemaVersionError",
    "SpendRow",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreIntegrityError",
    "display_url",
    "key_id_of",
    "parse_anchor_text",
    "proposal_id_for",
    "read_anchor_file",
    "register_migration",
]
