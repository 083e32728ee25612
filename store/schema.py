"""Tables, the schema version, and the migrations that bring an older database up to date.

Portable on purpose (SQLite by default, PostgreSQL by URL): JSON is stored as canonical text,
timestamps as timezone-aware UTC, and no dialect-only SQL is used outside the explicit
dialect checks below.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from store.errors import SchemaVersionError

__all__ = [
    "GENESIS_HASH",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "UTCDateTime",
    "metadata",
    "prepare_schema",
    "read_schema_version",
    "register_migration",
]

SCHEMA_VERSION = 6  # v2: calibration; v3: spend anomalies; v4: rollouts; v5: API keys;
# v6: the gateway's shared ledger (spend per task and team-day, task routes)
GENESIS_HASH = "0" * 64  # prev_hash of audit entry 1

# A migration takes a connection inside the upgrade transaction and moves the schema from
# ``from_version`` to ``from_version + 1``; the store updates ``schema_meta`` after it.
Migration = Callable[[Connection], None]
MIGRATIONS: dict[int, Migration] = {}


def register_migration(from_version: int) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        if from_version in MIGRATIONS:
            raise ValueError(f"a migration from schema v{from_version} is already registered")
        MIGRATIONS[from_version] = fn
        return fn

    return register


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, whatever the backend keeps.

    SQLite has no time zones, so it is given naive UTC (fixed-width text, which also makes
    ``<`` comparisons correct); PostgreSQL gets ``timestamptz``. Naive input is refused: a
    timestamp without a zone is a bug, not a guess to make.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

HASH = sa.String(64)
NAME = sa.String(200)

schema_meta = sa.Table(
    "schema_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

policies = sa.Table(
    "policies",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("content_hash", HASH, nullable=False, index=True),
    sa.Column("parent_version", sa.Integer, nullable=True),
    sa.Column("author", NAME, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("stored_at", UTCDateTime, nullable=False),
    sa.Column("yaml_text", sa.Text, nullable=False),
)

proposals = sa.Table(
    "proposals",
    metadata,
    sa.Column("proposal_id", sa.String(32), primary_key=True),
    sa.Column("candidate_version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("baseline_version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("candidate_hash", HASH, nullable=False),
    sa.Column("baseline_hash", HASH, nullable=False),
    sa.Column("lever", sa.String(64), nullable=False),
    sa.Column("time_window", sa.String(200), nullable=False),
    sa.Column("predicted_json", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False, index=True),
    sa.Column("gate_verdict", sa.String(16), nullable=True),
    sa.Column("evidence_hash", sa.ForeignKey("evidence.sha256"), nullable=True),
    sa.Column("created_by", NAME, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

evidence = sa.Table(
    "evidence",
    metadata,
    sa.Column("sha256", HASH, primary_key=True),
    sa.Column("candidate_hash", HASH, nullable=False, index=True),
    # No foreign key: a bundle may be stored for a candidate before its proposal exists,
    # and the proposal row in turn points at its gating bundle.
    sa.Column("proposal_id", sa.String(32), nullable=True, index=True),
    sa.Column("json_text", sa.Text, nullable=False),
    sa.Column("stored_at", UTCDateTime, nullable=False),
)

approvals = sa.Table(
    "approvals",
    metadata,
    # One decision per proposal: the primary key is the backstop for the rule.
    sa.Column("proposal_id", sa.ForeignKey("proposals.proposal_id"), primary_key=True),
    sa.Column("approver", NAME, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
)

activations = sa.Table(
    "activations",
    metadata,
    sa.Column("activation_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("previous_version", sa.ForeignKey("policies.version"), nullable=True),
    sa.Column("actor", NAME, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("proposal_id", sa.ForeignKey("proposals.proposal_id"), nullable=True),
    sa.Column("activated_at", UTCDateTime, nullable=False),
)

# Exactly one row (slot = 1) once a policy has been activated: "exactly one active policy"
# is then a property of the table's shape, not of code remembering to clear a flag.
active_policy = sa.Table(
    "active_policy",
    metadata,
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("activation_id", sa.ForeignKey("activations.activation_id"), nullable=False),
    sa.CheckConstraint("slot = 1", name="active_policy_single_row"),
)

# Progressive delivery: an approved proposal's candidate serves ``share`` of new tasks (by a
# stable hash of the task id) beside the active policy, step by step, until it is promoted
# (state ``completed``) or stopped (``aborted``). At most one rollout is ``running``.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("proposal_id", sa.ForeignKey("proposals.proposal_id"), primary_key=True),
    sa.Column("candidate_version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("baseline_version", sa.ForeignKey("policies.version"), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("share > 0 AND share <= 1", name="rollouts_share_range"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", NAME, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

audit_entries = sa.Table(
    "audit_entries",
    metadata,
    # The primary key on seq is the backstop that keeps the chain linear: two writers that
    # both computed seq N collide here, and the loser retries.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("actor", NAME, nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False, index=True),
    sa.Column("payload_json", sa.Text, nullable=False),
    sa.Column("prev_hash", HASH, nullable=False),
    sa.Column("entry_hash", HASH, nullable=False, unique=True),
)

# The chain's head (last seq and hash), one row. Writers lock it first (SELECT ... FOR
# UPDATE on PostgreSQL; BEGIN IMMEDIATE already holds the lock on SQLite), and verification
# compares it with the last entry, so removing entries from the end is detected too.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("last_hash", HASH, nullable=False),
    sa.CheckConstraint("slot = 1", name="audit_head_single_row"),
)

# The calibration record: one row per verify look at a promoted change, predicted against
# realised (relative change of cost per Green PR), and whether the realised point fell
# inside the predicted interval. ``widen`` is the interval inflation the nightly applied to
# the prediction (``controlplane.loop.calibration``), so the record can be read back on the
# estimator's own scale. Unique per (proposal, look): a verify rerun never duplicates a row.
calibration = sa.Table(
    "calibration",
    metadata,
    sa.Column("record_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("proposal_id", sa.ForeignKey("proposals.proposal_id"), nullable=False,
              index=True),
    sa.Column("lever", sa.String(64), nullable=False, index=True),
    sa.Column("look", sa.Integer, nullable=False),
    sa.Column("time_window", sa.String(200), nullable=False),
    sa.Column("realised_window", sa.String(200), nullable=False),
    sa.Column("level", sa.Float, nullable=True),
    sa.Column("predicted", sa.Float, nullable=False),
    sa.Column("predicted_low", sa.Float, nullable=True),
    sa.Column("predicted_high", sa.Float, nullable=True),
    sa.Column("realised", sa.Float, nullable=False),
    sa.Column("realised_low", sa.Float, nullable=True),
    sa.Column("realised_high", sa.Float, nullable=True),
    sa.Column("inside", sa.Boolean, nullable=True),
    sa.Column("widen", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("baseline_tasks", sa.Integer, nullable=False),
    sa.Column("candidate_tasks", sa.Integer, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("proposal_id", "look", name="calibration_one_row_per_look"),
)

# Spend anomalies (``economics.anomalies``): one row per granularity (hour or day), scope
# (team, tier, family), key and period start. Recording is idempotent on those four: a
# nightly rerun or ``autopilot anomalies`` over the same window never duplicates a row.
anomalies = sa.Table(
    "anomalies",
    metadata,
    sa.Column("anomaly_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("granularity", sa.String(8), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("key", NAME, nullable=False),
    sa.Column("period_start", UTCDateTime, nullable=False, index=True),
    sa.Column("spend_usd", sa.Float, nullable=False),
    sa.Column("baseline_usd", sa.Float, nullable=False),
    sa.Column("threshold_usd", sa.Float, nullable=False),
    sa.Column("history", sa.Integer, nullable=False),
    sa.Column("detected_by", NAME, nullable=False),
    sa.Column("detected_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("granularity", "scope", "key", "period_start",
                        name="anomalies_one_row_per_period"),
)

# Gateway API keys (``store/keys.py``): each bound to a team (and optionally repos) and a
# purpose (``serve``, or ``gate``: may name a policy version). Only the SHA-256 of the secret
# is kept; the secret itself is shown once, at creation. A revoked key keeps its row (the
# audit log and spans name its id), with ``revoked_at`` set.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", NAME, nullable=False),
    sa.Column("team", NAME, nullable=False, index=True),
    sa.Column("repos_json", sa.Text, nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("secret_sha256", HASH, nullable=False),
    sa.Column("created_by", NAME, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("revoked_by", NAME, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
)

# The gateway's shared ledger (``store/ledger.py``, issue 15 defect 7): what every gateway
# replica agrees a task and a team-day spent, and the route each task started on, so a
# restarted gateway keeps them. Rows are added to (spend) or written once (routes) by the
# ledger's owner in batches; a task's row has ``day`` ''.
gateway_spend = sa.Table(
    "gateway_spend",
    metadata,
    sa.Column("scope", sa.String(8), primary_key=True),
    sa.Column("key", NAME, primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("calls", sa.Integer, nullable=False),
    sa.Column("last_attempt", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False, index=True),
)

gateway_routes = sa.Table(
    "gateway_routes",
    metadata,
    sa.Column("task_id", NAME, primary_key=True),
    sa.Column("policy_version", sa.Integer, nullable=False),
    sa.Column("start", sa.Integer, nullable=False),
    sa.Column("start_propensity", sa.Float, nullable=False),
    sa.Column("shadow_tier", NAME, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
)

STORE_TABLES = frozenset(metadata.tables)
_SCHEMA_VERSION_KEY = "schema_version"


def read_schema_version(conn: Connection) -> int | None:
    """The version recorded in the database; None for a database without our tables."""
    existing = set(sa.inspect(conn).get_table_names())
    if "schema_meta" not in existing:
        # Our tables without schema_meta predate versioning: that is v0.
        return 0 if existing & STORE_TABLES else None
    raw = conn.execute(
        sa.select(schema_meta.c.value).where(schema_meta.c.key == _SCHEMA_VERSION_KEY)
    ).scalar_one_or_none()
    return 0 if raw is None else int(raw)


def _write_schema_version(conn: Connection, version: int) -> None:
    updated = conn.execute(
        sa.update(schema_meta)
        .where(schema_meta.c.key == _SCHEMA_VERSION_KEY)
        .values(value=str(version))
    )
    if updated.rowcount == 0:
        conn.execute(sa.insert(schema_meta).values(key=_SCHEMA_VERSION_KEY, value=str(version)))


def prepare_schema(conn: Connection, *, code_version: int = SCHEMA_VERSION) -> int:
    """Create a fresh schema, or migrate an older one, inside the caller's transaction.

    Returns the version the database had before. A newer database is refused: this code
    cannot know what the newer columns mean, and writing to them could corrupt it.
    """
    found = read_schema_version(conn)
    if found is None:
        metadata.create_all(conn)
        _write_schema_version(conn, code_version)
        conn.execute(sa.insert(audit_head).values(slot=1, last_seq=0, last_hash=GENESIS_HASH))
        return code_version
    if found > code_version:
        raise SchemaVersionError(
            f"database schema v{found} is newer than this autopilot (v{code_version}): "
            "upgrade the autopilot"
        )
    if found < code_version:
        schema_meta.create(conn, checkfirst=True)
        for step in range(found, code_version):
            migrate = MIGRATIONS.get(step)
            if migrate is None:
                raise SchemaVersionError(
                    f"database schema v{found} is older than this autopilot (v{code_version}) "
                    f"and no migration from v{step} to v{step + 1} is registered"
                )
            migrate(conn)
            _write_schema_version(conn, step + 1)
    return found


@register_migration(1)
def _v1_to_v2(conn: Connection) -> None:
    """v2 adds the calibration record (a new table; no existing row changes)."""
    calibration.create(conn, checkfirst=True)


@register_migration(2)
def _v2_to_v3(conn: Connection) -> None:
    """v3 adds the spend anomalies (a new table; no existing row changes)."""
    anomalies.create(conn, checkfirst=True)


@register_migration(3)
def _v3_to_v4(conn: Connection) -> None:
    """v4 adds progressive delivery (the rollouts table; no existing row changes)."""
    rollouts.create(conn, checkfirst=True)


@register_migration(4)
def _v4_to_v5(conn: Connection) -> None:
    """v5 adds the gateway's API keys (a new table; no existing row changes)."""
    api_keys.create(conn, checkfirst=True)


@register_migration(5)
def _v5_to_v6(conn: Connection) -> None:
    """v6 adds the gateway's shared ledger (two new tables; no existing row changes)."""
    gateway_spend.create(conn, checkfirst=True)
    gateway_routes.create(conn, checkfirst=True)
