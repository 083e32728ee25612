"""The store: policy versions and the active pointer, proposals, evidence, approvals,
leases, the calibration record, spend anomalies and the audit log, in one SQL database
(SQLite file by default, PostgreSQL by URL).

Every write runs in one transaction that first takes the store's write lock (BEGIN
IMMEDIATE on SQLite; a row lock on the audit chain head elsewhere), does its work, and
appends its audit entries before committing: either all of it happens or none of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row

from contracts.documents import DocumentError, canonical_json
from contracts.prediction import Prediction
from policies.policy import Policy, load_policy
from store.anchors import ANCHOR_FILE, Anchor, append_anchor, read_anchor_file
from store.audit import AuditSeqConflict, append_entry, row_to_entry, verify_chain
from store.errors import (
    DecisionAlreadyRecorded,
    EvidenceMismatch,
    IllegalTransition,
    NotFoundError,
    PolicyVersionConflict,
    PromotionRefused,
    StoreBusy,
    StoreError,
    StoreIntegrityError,
    translate_database_errors,
)
from store.keys import ApiKeysMixin
from store.ledger import LedgerMixin
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
    proposal_id_for,
    realised_gap,
)
from store.replay import StateRows, is_store_action, proposal_problems, state_problems
from store.rollouts import RolloutsMixin
from store.schema import (
    GENESIS_HASH,
    activations,
    active_policy,
    anomalies,
    api_keys,
    approvals,
    audit_entries,
    audit_head,
    calibration,
    evidence,
    leases,
    policies,
    prepare_schema,
    proposals,
    read_schema_version,
    rollouts,
)

__all__ = ["DATABASE_FILENAME", "Store", "display_url"]

DATABASE_FILENAME = "autopilot.db"
T = TypeVar("T")
_log = logging.getLogger(__name__)

# Connection execution option that makes the SQLite "begin" hook take the write lock.
_WRITE_OPTION = "autopilot_write"
# Arbitrary constant: the PostgreSQL advisory lock that serialises schema creation/upgrade.
_SCHEMA_LOCK_KEY = 0x6175746F  # "auto"
_WRITE_ATTEMPTS = 5


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    # Policy metadata may carry a naive timestamp; a policy file's clock is read as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _require_text(what: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{what} must be a non-empty string (got {value!r})")
    return value


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below): the sqlite3 module's own transaction
        # handling would start writes with a deferred BEGIN and skip it for SELECT and DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the database's write lock up front, so read-then-write (the audit
        # chain head, the active pointer) cannot interleave; readers stay lock-free.
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _policy_record(row: Row[Any]) -> PolicyRecord:
    try:
        policy = load_policy(row.yaml_text)
    except DocumentError as err:
        raise StoreIntegrityError(f"policy v{row.version} in the store no longer loads: {err}") from err
    if policy.content_hash != row.content_hash or policy.metadata.version != row.version:
        raise StoreIntegrityError(
            f"policy v{row.version} in the store does not match its recorded hash "
            f"{row.content_hash[:12]} (the stored YAML hashes to {policy.content_hash[:12]}): "
            "the policies table was altered"
        )
    return PolicyRecord(
        version=row.version,
        content_hash=row.content_hash,
        parent_version=row.parent_version,
        author=row.author,
        created=row.created,
        stored_at=row.stored_at,
        yaml_text=row.yaml_text,
        policy=policy,
    )


def _activation_record(row: Row[Any]) -> ActivationRecord:
    return ActivationRecord(
        activation_id=row.activation_id,
        version=row.version,
        previous_version=row.previous_version,
        actor=row.actor,
        reason=row.reason,
        proposal_id=row.proposal_id,
        activated_at=row.activated_at,
    )


def _proposal_record(row: Row[Any]) -> ProposalRecord:
    return ProposalRecord(
        proposal_id=row.proposal_id,
        candidate_version=row.candidate_version,
        baseline_version=row.baseline_version,
        candidate_hash=row.candidate_hash,
        baseline_hash=row.baseline_hash,
        lever=row.lever,
        window=row.time_window,
        predicted=Prediction.model_validate(json.loads(row.predicted_json)),
        state=ProposalState(row.state),
        gate_verdict=GateVerdict(row.gate_verdict) if row.gate_verdict else None,
        evidence_hash=row.evidence_hash,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _evidence_record(row: Row[Any]) -> EvidenceRecord:
    actual = hashlib.sha256(row.json_text.encode("utf-8")).hexdigest()
    if actual != row.sha256:
        raise StoreIntegrityError(
            f"evidence bundle {row.sha256[:12]} does not match its hash (content hashes to "
            f"{actual[:12]}): the evidence table was altered"
        )
    return EvidenceRecord(
        sha256=row.sha256,
        candidate_hash=row.candidate_hash,
        proposal_id=row.proposal_id,
        json_text=row.json_text,
        stored_at=row.stored_at,
    )


# The schema of the gates' evidence bundles (``gates.evidence.SCHEMA``). The store reads
# three things from such a bundle, nothing else: the content hashes of the candidate and
# the baseline it judged (``candidate.content_hash``, ``baseline.content_hash``) and its
# ``overall`` verdict.
GATE_EVIDENCE_SCHEMA = "autopilot.gate-evidence"


def _named_hash(data: Any, role: str) -> str | None:
    part = data.get(role) if isinstance(data, dict) else None
    value = part.get("content_hash") if isinstance(part, dict) else None
    return value if isinstance(value, str) else None


def _binding_problems(data: Any, proposal: Row[Any]) -> list[str]:
    """Why a bundle is not evidence about this proposal: it names a candidate or baseline
    hash other than the proposal's (a gate-evidence bundle must name both)."""
    gate_bundle = isinstance(data, dict) and data.get("schema") == GATE_EVIDENCE_SCHEMA
    problems = []
    for role, expected in (("candidate", proposal.candidate_hash),
                           ("baseline", proposal.baseline_hash)):
        named = _named_hash(data, role)
        if named is None:
            if gate_bundle:
                problems.append(f"it names no {role} hash (the proposal's {role} is "
                                f"{expected[:12]})")
        elif named != expected:
            problems.append(f"it judged {role} {named[:12]} but the proposal's {role} is "
                            f"{expected[:12]}")
    return problems


def _verdict_problems(data: Any, verdict: str) -> list[str]:
    """Why a bundle does not back this verdict: its ``overall`` is another one, or it is
    a dry run's bundle (which never records a verdict)."""
    if not isinstance(data, dict):
        return []
    problems = []
    overall = data.get("overall")
    if overall is not None and overall != verdict:
        problems.append(f"its overall verdict is {overall}, not {verdict}")
    if data.get("dry_run") is True:
        problems.append("it is a dry run's bundle")
    return problems


def _calibration_record(row: Row[Any]) -> CalibrationRecord:
    return CalibrationRecord(
        record_id=row.record_id,
        proposal_id=row.proposal_id,
        lever=row.lever,
        look=row.look,
        window=row.time_window,
        realised_window=row.realised_window,
        level=row.level,
        predicted=row.predicted,
        predicted_low=row.predicted_low,
        predicted_high=row.predicted_high,
        realised=row.realised,
        realised_low=row.realised_low,
        realised_high=row.realised_high,
        inside=None if row.inside is None else bool(row.inside),
        widen=row.widen,
        outcome=row.outcome,
        baseline_tasks=row.baseline_tasks,
        candidate_tasks=row.candidate_tasks,
        recorded_at=row.recorded_at,
    )


def _anomaly_record(row: Row[Any]) -> AnomalyRecord:
    return AnomalyRecord(
        anomaly_id=row.anomaly_id,
        granularity=row.granularity,
        scope=row.scope,
        key=row.key,
        period_start=row.period_start,
        spend_usd=row.spend_usd,
        baseline_usd=row.baseline_usd,
        threshold_usd=row.threshold_usd,
        history=row.history,
        detected_by=row.detected_by,
        detected_at=row.detected_at,
    )


_ANOMALY_GRANULARITIES = ("hour", "day")


def _anomaly_values(item: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one anomaly to record, checked (a bad one refuses the whole batch)."""
    try:
        granularity, scope, key = item["granularity"], item["scope"], item["key"]
        period, history = item["period_start"], item["history"]
        figures = {name: item[name] for name in ("spend_usd", "baseline_usd", "threshold_usd")}
    except (KeyError, TypeError) as exc:
        raise StoreError(f"an anomaly needs granularity, scope, key, period_start, spend_usd, "
                         f"baseline_usd, threshold_usd and history (got {item!r})") from exc
    if granularity not in _ANOMALY_GRANULARITIES:
        raise StoreError(f"anomaly granularity must be one of {_ANOMALY_GRANULARITIES} "
                         f"(got {granularity!r})")
    _require_text("anomaly scope", scope)
    _require_text("anomaly key", key)
    if hasattr(period, "to_pydatetime"):  # a pandas Timestamp
        period = period.to_pydatetime()
    if not isinstance(period, datetime) or period.tzinfo is None:
        raise StoreError(f"anomaly period_start must be an aware datetime (got {period!r})")
    for name, value in figures.items():
        number = _finite_or_none(value)
        if number is None or number < 0:
            raise StoreError(f"anomaly {name} must be a finite non-negative number "
                             f"(got {value!r})")
        figures[name] = number
    if isinstance(history, bool) or not isinstance(history, int) or history < 0:
        raise StoreError(f"anomaly history must be a non-negative integer (got {history!r})")
    return {"granularity": granularity, "scope": scope, "key": key,
            "period_start": period.astimezone(UTC), "history": history, **figures}


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _approval_record(row: Row[Any]) -> ApprovalRecord:
    return ApprovalRecord(
        proposal_id=row.proposal_id,
        approver=row.approver,
        decision=Decision(row.decision),
        reason=row.reason,
        decided_at=row.decided_at,
    )


class Store(RolloutsMixin, ApiKeysMixin, LedgerMixin):
    """The autopilot's record. Open with ``Store.open(url)`` or ``Store.for_state_dir(dir)``.

    Thread-safe: every call checks a connection out of the engine's pool for its own
    transaction. ``clock`` (aware UTC datetimes) is injectable for tests of expiry.
    ``anchor_file``: where the audit chain's head is appended after every promotion,
    rollback and end of a canary, and which ``verify_audit`` checks (``store.anchors``).
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utc_now,
                 anchor_file: str | Path | None = None):
        self._engine = engine
        self._clock = clock
        self._display_url = engine.url.render_as_string(hide_password=True)
        self._anchor_file = None if anchor_file is None else Path(anchor_file)

    # ------------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
        busy_timeout_s: float = 30.0,
        anchor_file: str | Path | None = None,
    ) -> Store:
        """Connect, then create the schema (fresh database) or migrate it (older one).

        A database whose schema is newer than this code is refused with SchemaVersionError.
        ``anchor_file`` defaults, for a SQLite file, to ``audit/anchors.jsonl`` beside it
        (the state directory's, for the embedded default); other databases have none unless
        given one.
        """
        display = display_url(url)
        with translate_database_errors(f"opening store {display}"):
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite":
                engine = sa.create_engine(parsed, connect_args={"timeout": busy_timeout_s})
                _configure_sqlite(engine, busy_timeout_s)
                database = parsed.database
                if anchor_file is None and database and database != ":memory:" \
                        and not database.startswith("file:"):
                    anchor_file = Path(database).expanduser().resolve().parent / ANCHOR_FILE
            else:
                engine = sa.create_engine(parsed, pool_pre_ping=True)
        store = cls(engine, clock=clock, anchor_file=anchor_file)
        try:
            store._prepare()
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    def for_state_dir(cls, path: str | Path, **options: Any) -> Store:
        """The embedded default: ``<state dir>/autopilot.db`` (the directory is created)."""
        root = Path(path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls.open(f"sqlite:///{root / DATABASE_FILENAME}", **options)

    def _prepare(self) -> None:
        what = f"opening store {self._display_url}"
        with translate_database_errors(what), self._engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Two processes opening a fresh database must not both create it.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
                prepare_schema(conn)

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self._display_url

    @property
    def anchor_file(self) -> Path | None:
        """Where this store appends the audit chain's head (None: nowhere)."""
        return self._anchor_file

    def schema_version(self) -> int:
        with self._reading("reading the schema version") as conn:
            return read_schema_version(conn) or 0

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._display_url!r})"

    # ------------------------------------------------------------------- transactions
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise StoreError("the store's clock returned a naive datetime; it must be aware UTC")
        return now.astimezone(UTC)

    @contextmanager
    def _reading(self, what: str) -> Iterator[Connection]:
        with translate_database_errors(what), self._engine.connect() as conn, conn.begin():
            yield conn

    def _write(self, what: str, work: Callable[[Connection, datetime], T]) -> T:
        """Run ``work`` in one locked transaction; retry it if the audit chain raced."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with translate_database_errors(what), self._engine.connect() as conn:
                    conn.execution_options(**{_WRITE_OPTION: True})
                    with conn.begin():
                        # No-op on SQLite (BEGIN IMMEDIATE holds the lock); a row lock on
                        # PostgreSQL, which serialises every writer on the chain head.
                        conn.execute(
                            sa.select(audit_head.c.slot)
                            .where(audit_head.c.slot == 1)
                            .with_for_update()
                        )
                        return work(conn, self._now())
            except AuditSeqConflict as conflict:
                if attempt == _WRITE_ATTEMPTS:
                    raise StoreBusy(f"{what}: {conflict} {attempt} times; retry later") from conflict
        raise AssertionError("unreachable")  # pragma: no cover

    def _audit(
        self,
        conn: Connection,
        now: datetime,
        *,
        actor: str,
        action: str,
        subject: str,
        payload: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        return append_entry(conn, ts=now, actor=actor, action=action, subject=subject,
                            payload=payload)

    # ------------------------------------------------------------------------ policies
    def put_policy(self, policy: Policy, *, actor: str | None = None) -> PolicyRecord:
        """Store a policy version (its YAML and hash). Idempotent for the same spec.

        A different spec under a version number that is taken is refused: policies are
        immutable values, a change makes a new version.
        """
        version = policy.metadata.version
        yaml_text = policy.to_yaml()

        def work(conn: Connection, now: datetime) -> PolicyRecord:
            existing = conn.execute(
                sa.select(policies).where(policies.c.version == version)
            ).one_or_none()
            if existing is not None:
                if existing.content_hash == policy.content_hash:
                    return _policy_record(existing)
                raise PolicyVersionConflict(
                    f"policy v{version} already exists with spec hash "
                    f"{existing.content_hash[:12]}; refusing a different spec (hash "
                    f"{policy.content_hash[:12]}) under the same version: make a new version"
                )
            created = _as_utc(policy.metadata.created)
            conn.execute(
                sa.insert(policies).values(
                    version=version,
                    content_hash=policy.content_hash,
                    parent_version=policy.metadata.parent_version,
                    author=policy.metadata.author,
                    created=created,
                    stored_at=now,
                    yaml_text=yaml_text,
                )
            )
            self._audit(
                conn, now, actor=actor or policy.metadata.author, action="policy.put",
                subject=f"policy/v{version}",
                payload={"version": version, "content_hash": policy.content_hash,
                         "yaml_sha256": hashlib.sha256(yaml_text.encode("utf-8")).hexdigest(),
                         "parent_version": policy.metadata.parent_version,
                         "author": policy.metadata.author},
            )
            return PolicyRecord(version, policy.content_hash, policy.metadata.parent_version,
                                policy.metadata.author, created, now, yaml_text, policy)

        return self._write(f"storing policy v{version}", work)

    def get_policy(self, version: int) -> PolicyRecord:
        with self._reading(f"reading policy v{version}") as conn:
            return _policy_record(self._policy_row(conn, version))

    def list_policies(self) -> list[PolicyRecord]:
        with self._reading("listing policies") as conn:
            rows = conn.execute(sa.select(policies).order_by(policies.c.version)).all()
            return [_policy_record(row) for row in rows]

    def active_policy(self) -> PolicyRecord | None:
        """The policy serving should apply now; None before the first activation."""
        with self._reading("reading the active policy") as conn:
            row = conn.execute(
                sa.select(policies).join(active_policy, active_policy.c.version == policies.c.version)
            ).one_or_none()
            return None if row is None else _policy_record(row)

    def activation_history(self) -> list[ActivationRecord]:
        """Every move of the active pointer, newest first."""
        with self._reading("reading the activation history") as conn:
            rows = conn.execute(
                sa.select(activations).order_by(activations.c.activation_id.desc())
            ).all()
            return [_activation_record(row) for row in rows]

    def previous_active(self) -> PolicyRecord | None:
        """The policy that was active before the current one (the rollback target)."""
        with self._reading("reading the previously active policy") as conn:
            latest = conn.execute(
                sa.select(activations.c.previous_version)
                .order_by(activations.c.activation_id.desc())
                .limit(1)
            ).one_or_none()
            if latest is None or latest.previous_version is None:
                return None
            return _policy_record(self._policy_row(conn, latest.previous_version))

    def activate(
        self,
        version: int,
        *,
        actor: str,
        reason: str,
        proposal_id: str | None = None,
    ) -> ActivationRecord:
        """Move the active pointer to ``version`` and record it, in one transaction.

        With ``proposal_id`` the proposal moves too, in the same transaction: an approved
        proposal whose candidate is ``version`` becomes ``active`` (promotion), and the
        active proposal becomes ``rolled_back`` when another version replaces it (rollback).
        Activating the version that is already active changes nothing and returns the
        activation that made it active.
        """
        _require_text("actor", actor)
        _require_text("reason", reason)

        def work(conn: Connection, now: datetime) -> ActivationRecord:
            return self._activate(conn, now, version, actor, reason, proposal_id)

        record = self._write(f"activating policy v{version}", work)
        self._write_anchor()
        return record

    def promote(self, proposal_id: str, *, actor: str, reason: str) -> ActivationRecord:
        """Activate an approved proposal's candidate; the proposal becomes ``active``."""
        proposal = self.get_proposal(proposal_id)
        return self.activate(proposal.candidate_version, actor=actor, reason=reason,
                             proposal_id=proposal_id)

    def rollback(self, proposal_id: str, *, actor: str, reason: str) -> ActivationRecord:
        """Re-activate an active proposal's baseline; the proposal becomes ``rolled_back``."""
        proposal = self.get_proposal(proposal_id)
        return self.activate(proposal.baseline_version, actor=actor, reason=reason,
                             proposal_id=proposal_id)

    def _activate(
        self,
        conn: Connection,
        now: datetime,
        version: int,
        actor: str,
        reason: str,
        proposal_id: str | None,
    ) -> ActivationRecord:
        target = self._policy_row(conn, version)
        current = conn.execute(sa.select(active_policy)).one_or_none()
        current_version = None if current is None else current.version

        proposal_move: tuple[Row[Any], ProposalState] | None = None
        if proposal_id is not None:
            proposal = self._proposal_row(conn, proposal_id)
            proposal_move = (proposal, self._proposal_move_for_activation(
                proposal, version, current_version))
            if proposal_move[1] is ProposalState.ACTIVE:
                self._check_promotion_evidence(conn, proposal, current_version)
                self._check_promotion_audit(conn, proposal, current_version)
        elif current_version == version:
            assert current is not None
            row = conn.execute(
                sa.select(activations).where(activations.c.activation_id == current.activation_id)
            ).one()
            return _activation_record(row)

        activation_id = conn.execute(
            sa.insert(activations).values(
                version=version, previous_version=current_version, actor=actor, reason=reason,
                proposal_id=proposal_id, activated_at=now,
            )
        ).inserted_primary_key[0]
        if current is None:
            conn.execute(sa.insert(active_policy).values(
                slot=1, version=version, activation_id=activation_id))
        else:
            conn.execute(
                sa.update(active_policy).where(active_policy.c.slot == 1)
                .values(version=version, activation_id=activation_id)
            )
        self._audit(
            conn, now, actor=actor, action="policy.activate", subject=f"policy/v{version}",
            payload={"version": version, "previous_version": current_version,
                     "content_hash": target.content_hash, "reason": reason,
                     "proposal_id": proposal_id, "activation_id": activation_id},
        )
        if proposal_move is not None:
            proposal, to_state = proposal_move
            self._move_proposal(conn, now, proposal, to_state, actor=actor, reason=reason,
                                extra_payload={"version": version})
        return ActivationRecord(activation_id, version, current_version, actor, reason,
                                proposal_id, now)

    def _check_promotion_evidence(self, conn: Connection, proposal: Row[Any],
                                  current_version: int | None) -> None:
        """Refuse to promote a proposal whose recorded evidence is not about it (checked
        again here, in the promotion's transaction, whatever happened since recording).
        A verdict recorded without a bundle passes here; the product's promotion
        (``controlplane.loop.promotion``) requires one."""
        if proposal.evidence_hash is None:
            return
        sha = proposal.evidence_hash
        try:
            record = _evidence_record(self._evidence_row(conn, sha))
        except StoreError as err:
            raise PromotionRefused(
                f"proposal {proposal.proposal_id}: its evidence bundle {sha[:12]} cannot be "
                f"trusted ({err}); policy v{current_version} stays active") from None
        problems = []
        if record.candidate_hash != proposal.candidate_hash:
            problems.append(f"it is stored for candidate {record.candidate_hash[:12]}, not "
                            f"{proposal.candidate_hash[:12]}")
        if record.proposal_id != proposal.proposal_id:
            problems.append(f"it belongs to proposal {record.proposal_id}")
        try:
            data = json.loads(record.json_text)
        except ValueError:
            data = None
            problems.append("it is not JSON")
        problems += _binding_problems(data, proposal)
        if proposal.gate_verdict is not None:
            problems += _verdict_problems(data, proposal.gate_verdict)
        if problems:
            raise PromotionRefused(
                f"proposal {proposal.proposal_id}: its evidence bundle {sha[:12]} does not "
                f"back it: {'; '.join(problems)}; policy v{current_version} stays active")

    def _check_promotion_audit(self, conn: Connection, proposal: Row[Any],
                               current_version: int | None) -> None:
        """Refuse to promote (or start the canary of) a proposal whose approval, state or
        candidate do not match the audit log: a forged or edited approval row, a state set
        outside the store, a candidate policy row edited since it was stored. Cheap: this
        proposal's entries (by subject) and its candidate's ``policy.put`` only."""
        pid = proposal.proposal_id
        entries, problems = [], []
        for row in conn.execute(sa.select(audit_entries).where(audit_entries.c.subject == pid)
                                .order_by(audit_entries.c.seq)):
            try:
                entries.append(row_to_entry(row))
            except ValueError:
                problems.append(f"audit entry #{row.seq} of proposal {pid} is not JSON: altered")
        approval = conn.execute(
            sa.select(approvals).where(approvals.c.proposal_id == pid)).one_or_none()
        problems += proposal_problems(proposal, entries, approval, check_hashes=True)
        if approval is None:
            problems.append(f"proposal {pid} has no approval row")
        elif approval.decision != Decision.APPROVE.value:
            problems.append(f"the decision on proposal {pid} is {approval.decision}")
        candidate = self._policy_row(conn, proposal.candidate_version)
        if candidate.content_hash != proposal.candidate_hash:
            problems.append(f"policy v{candidate.version}'s row says hash "
                            f"{candidate.content_hash[:12]} but the proposal was gated on "
                            f"{proposal.candidate_hash[:12]}")
        put = conn.execute(
            sa.select(audit_entries)
            .where(audit_entries.c.subject == f"policy/v{candidate.version}",
                   audit_entries.c.action == "policy.put")
            .order_by(audit_entries.c.seq).limit(1)).one_or_none()
        recorded = None if put is None else json.loads(put.payload_json).get("content_hash")
        if recorded != candidate.content_hash:
            problems.append(f"policy v{candidate.version}'s row says hash "
                            f"{candidate.content_hash[:12]} but the audit log recorded "
                            f"{'none' if recorded is None else recorded[:12]} when it was stored")
        if problems:
            raise PromotionRefused(
                f"proposal {pid} does not match the audit log, so it is not promoted: "
                f"{'; '.join(problems)}; policy v{current_version} stays active")

    @staticmethod
    def _proposal_move_for_activation(
        proposal: Row[Any], version: int, current_version: int | None
    ) -> ProposalState:
        pid, state = proposal.proposal_id, ProposalState(proposal.state)
        if state in (ProposalState.APPROVED, ProposalState.CANARY):
            if version != proposal.candidate_version:
                raise PromotionRefused(
                    f"proposal {pid} promotes policy v{proposal.candidate_version}, "
                    f"not v{version}"
                )
            if current_version != proposal.baseline_version:
                raise PromotionRefused(
                    f"proposal {pid} was gated against policy v{proposal.baseline_version} "
                    f"but v{current_version} is active now: re-propose against the active policy"
                )
            return ProposalState.ACTIVE
        if state is ProposalState.ACTIVE:
            if current_version != proposal.candidate_version:
                raise PromotionRefused(
                    f"proposal {pid} (policy v{proposal.candidate_version}) is not the active "
                    f"policy (v{current_version} is): only the active proposal can be rolled back"
                )
            if version == proposal.candidate_version:
                raise PromotionRefused(
                    f"proposal {pid} is already active with policy v{version}"
                )
            return ProposalState.ROLLED_BACK
        raise IllegalTransition(
            pid, state.value, ProposalState.ACTIVE.value,
            "only an approved proposal can be activated, or an active one rolled back",
        )

    # ----------------------------------------------------------------------- proposals
    def create_proposal(
        self,
        *,
        candidate_version: int,
        baseline_version: int,
        lever: str,
        window: str,
        predicted: Prediction | Mapping[str, Any] | None = None,
        actor: str,
    ) -> ProposalRecord:
        """Record a candidate as a proposal (state ``proposed``). Idempotent: the id is
        derived from the candidate and baseline hashes and the window, and a second call
        returns the existing proposal unchanged.
        """
        _require_text("lever", lever)
        _require_text("window", window)
        _require_text("actor", actor)
        if not isinstance(predicted, Prediction):
            try:
                predicted = Prediction.model_validate(dict(predicted or {}))
            except ValueError as exc:
                raise StoreError(f"predicted: {exc}") from exc
        predicted_json = canonical_json(predicted.record())

        def work(conn: Connection, now: datetime) -> ProposalRecord:
            candidate = self._policy_row(conn, candidate_version)
            baseline = self._policy_row(conn, baseline_version)
            if candidate.content_hash == baseline.content_hash:
                raise StoreError(
                    f"candidate v{candidate_version} has the same spec as baseline "
                    f"v{baseline_version} (hash {candidate.content_hash[:12]}): nothing to propose"
                )
            pid = proposal_id_for(candidate.content_hash, baseline.content_hash, window)
            existing = conn.execute(
                sa.select(proposals).where(proposals.c.proposal_id == pid)
            ).one_or_none()
            if existing is not None:
                return _proposal_record(existing)
            conn.execute(
                sa.insert(proposals).values(
                    proposal_id=pid, candidate_version=candidate_version,
                    baseline_version=baseline_version, candidate_hash=candidate.content_hash,
                    baseline_hash=baseline.content_hash, lever=lever, time_window=window,
                    predicted_json=predicted_json, state=ProposalState.PROPOSED.value,
                    gate_verdict=None, evidence_hash=None, created_by=actor,
                    created_at=now, updated_at=now,
                )
            )
            self._audit(
                conn, now, actor=actor, action="proposal.proposed", subject=pid,
                payload={"to": ProposalState.PROPOSED.value,
                         "candidate_version": candidate_version,
                         "baseline_version": baseline_version,
                         "candidate_hash": candidate.content_hash,
                         "baseline_hash": baseline.content_hash, "lever": lever,
                         "window": window, "predicted": json.loads(predicted_json)},
            )
            return _proposal_record(self._proposal_row(conn, pid))

        return self._write(f"creating a proposal for policy v{candidate_version}", work)

    def get_proposal(self, proposal_id: str) -> ProposalRecord:
        with self._reading(f"reading proposal {proposal_id}") as conn:
            return _proposal_record(self._proposal_row(conn, proposal_id))

    def list_proposals(self, state: ProposalState | str | None = None) -> list[ProposalRecord]:
        """Proposals, oldest first; only those in ``state`` if given."""
        query = sa.select(proposals).order_by(proposals.c.created_at, proposals.c.proposal_id)
        if state is not None:
            query = query.where(proposals.c.state == _state(state).value)
        with self._reading("listing proposals") as conn:
            return [_proposal_record(row) for row in conn.execute(query).all()]

    def transition_proposal(
        self,
        proposal_id: str,
        to_state: ProposalState | str,
        *,
        actor: str,
        reason: str = "",
        verdict: GateVerdict | str | None = None,
        evidence_hash: str | None = None,
    ) -> ProposalRecord:
        """Move a proposal along the lifecycle and audit it, in one transaction.

        ``gated`` needs the gate ``verdict`` (and may link an evidence bundle). Decisions go
        through ``record_decision`` (which stores the approver) and activation/rollback
        through ``promote``/``rollback`` (which move the active pointer with it).
        """
        _require_text("actor", actor)
        target = _state(to_state)
        gate_verdict = _verdict(verdict) if verdict is not None else None

        def work(conn: Connection, now: datetime) -> ProposalRecord:
            row = self._proposal_row(conn, proposal_id)
            self._check_transition(row, target)
            # A person's decision goes through record_decision; the one rejection without an
            # approver is the gates' own (FAILED or ERROR), straight from gated.
            gate_rejection = (target is ProposalState.REJECTED
                              and row.state == ProposalState.GATED.value)
            if target in (ProposalState.APPROVED, ProposalState.REJECTED) and not gate_rejection:
                raise IllegalTransition(proposal_id, row.state, target.value,
                                        "record it with record_decision(), which stores the "
                                        "approver")
            if target in (ProposalState.ACTIVE, ProposalState.ROLLED_BACK):
                raise IllegalTransition(proposal_id, row.state, target.value,
                                        "use promote() or rollback(), which move the active "
                                        "policy in the same transaction")
            return self._gate_or_move(conn, now, row, target, actor=actor, reason=reason,
                                      verdict=gate_verdict, evidence_hash=evidence_hash)

        return self._write(f"moving proposal {proposal_id} to {target.value}", work)

    def record_gate(
        self,
        proposal_id: str,
        verdict: GateVerdict | str,
        *,
        actor: str,
        evidence: Mapping[str, Any] | str | None = None,
        reason: str = "",
    ) -> ProposalRecord:
        """Store the gate's evidence bundle and move the proposal to ``gated``, atomically.

        The bundle must be about this proposal: a candidate or baseline hash it names that
        is not the proposal's is refused (``EvidenceMismatch``), as is a bundle whose
        ``overall`` is not ``verdict`` or that a dry run wrote."""
        _require_text("actor", actor)
        gate_verdict = _verdict(verdict)

        def work(conn: Connection, now: datetime) -> ProposalRecord:
            row = self._proposal_row(conn, proposal_id)
            self._check_transition(row, ProposalState.GATED)
            evidence_hash = None
            if evidence is not None:
                stored = self._put_evidence(conn, now, evidence, actor=actor,
                                            proposal_id=proposal_id, candidate_hash=None)
                problems = _verdict_problems(stored.bundle, gate_verdict.value)
                if problems:
                    raise EvidenceMismatch(
                        f"proposal {proposal_id}: evidence bundle {stored.sha256[:12]} does "
                        f"not back the verdict {gate_verdict.value}: {'; '.join(problems)}")
                evidence_hash = stored.sha256
            return self._gate_or_move(conn, now, row, ProposalState.GATED, actor=actor,
                                      reason=reason, verdict=gate_verdict,
                                      evidence_hash=evidence_hash)

        return self._write(f"recording the gate verdict of proposal {proposal_id}", work)

    def _gate_or_move(
        self,
        conn: Connection,
        now: datetime,
        row: Row[Any],
        target: ProposalState,
        *,
        actor: str,
        reason: str,
        verdict: GateVerdict | None,
        evidence_hash: str | None,
    ) -> ProposalRecord:
        values: dict[str, Any] = {}
        payload: dict[str, Any] = {}
        if target is ProposalState.GATED:
            if verdict is None:
                raise StoreError(
                    f"proposal {row.proposal_id}: moving to gated needs the gate verdict "
                    f"({', '.join(v.value for v in GateVerdict)})"
                )
            values["gate_verdict"] = payload["verdict"] = verdict.value
            if evidence_hash is not None:
                self._evidence_row(conn, evidence_hash)
                values["evidence_hash"] = payload["evidence_hash"] = evidence_hash
        elif verdict is not None or evidence_hash is not None:
            raise StoreError(
                f"proposal {row.proposal_id}: a gate verdict or evidence is recorded only on "
                f"the move to gated (not {target.value})"
            )
        self._move_proposal(conn, now, row, target, actor=actor, reason=reason,
                            values=values, extra_payload=payload)
        return _proposal_record(self._proposal_row(conn, row.proposal_id))

    @staticmethod
    def _check_transition(row: Row[Any], target: ProposalState) -> None:
        current = ProposalState(row.state)
        allowed = ALLOWED_TRANSITIONS[current]
        if target not in allowed:
            hint = (f"allowed from {current.value}: "
                    f"{', '.join(sorted(s.value for s in allowed))}" if allowed
                    else f"{current.value} is final")
            raise IllegalTransition(row.proposal_id, current.value, target.value, hint)

    def _move_proposal(
        self,
        conn: Connection,
        now: datetime,
        row: Row[Any],
        target: ProposalState,
        *,
        actor: str,
        reason: str,
        values: Mapping[str, Any] | None = None,
        extra_payload: Mapping[str, Any] | None = None,
    ) -> None:
        self._check_transition(row, target)
        moved = conn.execute(
            sa.update(proposals)
            .where(proposals.c.proposal_id == row.proposal_id, proposals.c.state == row.state)
            .values(state=target.value, updated_at=now, **dict(values or {}))
        )
        if moved.rowcount != 1:  # the write lock makes this unreachable; keep the guard
            raise StoreBusy(f"proposal {row.proposal_id} changed state while being moved")
        self._audit(
            conn, now, actor=actor, action=f"proposal.{target.value}", subject=row.proposal_id,
            payload={"from": row.state, "to": target.value, "reason": reason,
                     **dict(extra_payload or {})},
        )

    # ----------------------------------------------------------------------- approvals
    def record_decision(
        self,
        proposal_id: str,
        *,
        approver: str,
        decision: Decision | str,
        reason: str,
    ) -> ApprovalRecord:
        """Record an approver's decision and move the proposal to approved/rejected.

        One decision per proposal: a second one is refused. Who may decide is checked by
        the caller; the store records who did.
        """
        _require_text("approver", approver)
        _require_text("reason", reason)
        try:
            choice = Decision(decision)
        except ValueError:
            raise StoreError(f"decision must be approve or reject (got {decision!r})") from None
        target = ProposalState.APPROVED if choice is Decision.APPROVE else ProposalState.REJECTED

        def work(conn: Connection, now: datetime) -> ApprovalRecord:
            row = self._proposal_row(conn, proposal_id)
            earlier = conn.execute(
                sa.select(approvals).where(approvals.c.proposal_id == proposal_id)
            ).one_or_none()
            if earlier is not None:
                raise DecisionAlreadyRecorded(
                    f"proposal {proposal_id} was already decided ({earlier.decision} by "
                    f"{earlier.approver} at {earlier.decided_at.isoformat()}): a decision is final"
                )
            self._check_transition(row, target)
            conn.execute(
                sa.insert(approvals).values(
                    proposal_id=proposal_id, approver=approver, decision=choice.value,
                    reason=reason, decided_at=now,
                )
            )
            self._move_proposal(conn, now, row, target, actor=approver, reason=reason,
                                extra_payload={"decision": choice.value})
            return ApprovalRecord(proposal_id, approver, choice, reason, now)

        return self._write(f"recording a decision on proposal {proposal_id}", work)

    def get_approval(self, proposal_id: str) -> ApprovalRecord | None:
        with self._reading(f"reading the decision on proposal {proposal_id}") as conn:
            row = conn.execute(
                sa.select(approvals).where(approvals.c.proposal_id == proposal_id)
            ).one_or_none()
            return None if row is None else _approval_record(row)

    # ------------------------------------------------------------------------ evidence
    def put_evidence(
        self,
        bundle: Mapping[str, Any] | str,
        *,
        actor: str,
        proposal_id: str | None = None,
        candidate_hash: str | None = None,
    ) -> EvidenceRecord:
        """Store an evidence bundle under the sha256 of its JSON text. Idempotent.

        A mapping is stored as canonical JSON; a string is stored byte for byte (it must be
        JSON). The bundle belongs to a proposal, or to a candidate hash before there is one.
        On a proposal, a candidate or baseline hash the bundle names (``candidate`` /
        ``baseline`` objects with a ``content_hash``; a gate-evidence bundle must name both)
        must be the proposal's, else ``EvidenceMismatch``.
        """
        _require_text("actor", actor)

        def work(conn: Connection, now: datetime) -> EvidenceRecord:
            return self._put_evidence(conn, now, bundle, actor=actor, proposal_id=proposal_id,
                                      candidate_hash=candidate_hash)

        return self._write("storing an evidence bundle", work)

    def _put_evidence(
        self,
        conn: Connection,
        now: datetime,
        bundle: Mapping[str, Any] | str,
        *,
        actor: str,
        proposal_id: str | None,
        candidate_hash: str | None,
    ) -> EvidenceRecord:
        if isinstance(bundle, str):
            try:
                data = json.loads(bundle)
            except ValueError as err:
                raise StoreError(f"evidence bundle is not valid JSON: {err}") from None
            json_text = bundle
        else:
            data = dict(bundle)
            json_text = canonical_json(data)
        sha = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        if proposal_id is not None:
            proposal = self._proposal_row(conn, proposal_id)
            problems = _binding_problems(data, proposal)
            if candidate_hash is not None and candidate_hash != proposal.candidate_hash:
                problems.insert(0, f"it was stored for candidate {candidate_hash[:12]} but the "
                                   f"proposal's candidate is {proposal.candidate_hash[:12]}")
            if problems:
                raise EvidenceMismatch(
                    f"evidence bundle {sha[:12]} is not about proposal {proposal_id}: "
                    f"{'; '.join(problems)} (a verdict is recorded only on the proposal "
                    f"whose candidate and baseline it judged)"
                )
            candidate_hash = proposal.candidate_hash
        if candidate_hash is None:
            raise StoreError("evidence needs a proposal_id or a candidate_hash to belong to")

        existing = conn.execute(sa.select(evidence).where(evidence.c.sha256 == sha)).one_or_none()
        if existing is not None:
            if existing.candidate_hash != candidate_hash:
                raise StoreError(
                    f"evidence bundle {sha[:12]} is already stored for candidate "
                    f"{existing.candidate_hash[:12]}, not {candidate_hash[:12]}"
                )
            if existing.proposal_id is None and proposal_id is not None:
                # A bundle stored before its proposal existed now gets linked to it.
                conn.execute(sa.update(evidence).where(evidence.c.sha256 == sha)
                             .values(proposal_id=proposal_id))
                self._audit_evidence(conn, now, actor, sha, candidate_hash, proposal_id)
            elif proposal_id is not None and existing.proposal_id != proposal_id:
                raise StoreError(
                    f"evidence bundle {sha[:12]} already belongs to proposal "
                    f"{existing.proposal_id}, not {proposal_id}"
                )
            return _evidence_record(self._evidence_row(conn, sha))

        conn.execute(
            sa.insert(evidence).values(sha256=sha, candidate_hash=candidate_hash,
                                       proposal_id=proposal_id, json_text=json_text,
                                       stored_at=now)
        )
        self._audit_evidence(conn, now, actor, sha, candidate_hash, proposal_id)
        return EvidenceRecord(sha, candidate_hash, proposal_id, json_text, now)

    def _audit_evidence(self, conn: Connection, now: datetime, actor: str, sha: str,
                        candidate_hash: str, proposal_id: str | None) -> None:
        self._audit(
            conn, now, actor=actor, action="evidence.put",
            subject=proposal_id or f"candidate/{candidate_hash[:12]}",
            payload={"sha256": sha, "candidate_hash": candidate_hash, "proposal_id": proposal_id},
        )

    def get_evidence(self, sha256: str) -> EvidenceRecord:
        """The bundle with this hash; its content is re-hashed on the way out."""
        with self._reading(f"reading evidence {sha256[:12]}") as conn:
            return _evidence_record(self._evidence_row(conn, sha256))

    def evidence_for(self, proposal_id: str) -> list[EvidenceRecord]:
        with self._reading(f"reading the evidence of proposal {proposal_id}") as conn:
            rows = conn.execute(
                sa.select(evidence).where(evidence.c.proposal_id == proposal_id)
                .order_by(evidence.c.stored_at, evidence.c.sha256)
            ).all()
            return [_evidence_record(row) for row in rows]

    # --------------------------------------------------------------------- calibration
    def record_calibration(
        self,
        proposal_id: str,
        *,
        look: int,
        realised: float,
        realised_ci: tuple[float, float] | None,
        realised_window: str,
        outcome: str,
        baseline_tasks: int,
        candidate_tasks: int,
        widen: float = 1.0,
        actor: str,
    ) -> CalibrationRecord:
        """Record one verify look of a proposal against its prediction (and audit it).

        The predicted point, interval and level are read from the proposal itself (its
        relative change of cost per Green PR), so the record can never disagree with what
        was proposed. ``inside`` is computed here. Idempotent per (proposal, look): a second
        call for the same look returns the first row unchanged.
        """
        _require_text("actor", actor)
        _require_text("realised_window", realised_window)
        _require_text("outcome", outcome)
        if not isinstance(look, int) or look < 1:
            raise StoreError(f"look must be a positive integer (got {look!r})")
        realised_value = _finite_or_none(realised)
        if realised_value is None:
            raise StoreError(f"realised must be a finite number (got {realised!r})")
        if not (isinstance(widen, (int, float)) and math.isfinite(widen) and widen > 0):
            raise StoreError(f"widen must be a positive finite number (got {widen!r})")
        r_low = r_high = None
        if realised_ci is not None:
            r_low, r_high = (_finite_or_none(v) for v in realised_ci)

        def work(conn: Connection, now: datetime) -> CalibrationRecord:
            proposal = _proposal_record(self._proposal_row(conn, proposal_id))
            existing = conn.execute(
                sa.select(calibration).where(calibration.c.proposal_id == proposal_id,
                                             calibration.c.look == look)
            ).one_or_none()
            if existing is not None:
                return _calibration_record(existing)
            predicted = proposal.predicted
            point = predicted.cost_per_green_pr_rel_delta
            if point is None:
                raise StoreError(f"proposal {proposal_id} predicted no change of cost per Green "
                                 "PR: nothing to calibrate")
            low = high = None
            if predicted.cost_per_green_pr_rel_delta_ci is not None:
                low, high = predicted.cost_per_green_pr_rel_delta_ci
            gap = realised_gap(float(point), low, high, realised_value, r_low, r_high)
            inside = None if gap is None else bool(gap <= 1.0)
            values = {
                "proposal_id": proposal_id, "lever": proposal.lever, "look": look,
                "time_window": proposal.window, "realised_window": realised_window,
                "level": predicted.level, "predicted": float(point),
                "predicted_low": low, "predicted_high": high, "realised": realised_value,
                "realised_low": r_low, "realised_high": r_high, "inside": inside,
                "widen": float(widen), "outcome": outcome,
                "baseline_tasks": int(baseline_tasks), "candidate_tasks": int(candidate_tasks),
                "recorded_at": now,
            }
            record_id = conn.execute(sa.insert(calibration).values(**values)
                                     ).inserted_primary_key[0]
            payload = {k: v for k, v in values.items() if k != "recorded_at"}
            self._audit(conn, now, actor=actor, action="calibration.record",
                        subject=proposal_id, payload={**payload, "record_id": record_id})
            return _calibration_record(conn.execute(
                sa.select(calibration).where(calibration.c.record_id == record_id)).one())

        return self._write(f"recording calibration of proposal {proposal_id}", work)

    def calibration_records(
        self,
        *,
        lever: str | None = None,
        proposal_id: str | None = None,
    ) -> list[CalibrationRecord]:
        """The calibration record, oldest first; only one lever's or proposal's if given."""
        query = sa.select(calibration).order_by(calibration.c.recorded_at,
                                                calibration.c.record_id)
        if lever is not None:
            query = query.where(calibration.c.lever == lever)
        if proposal_id is not None:
            query = query.where(calibration.c.proposal_id == proposal_id)
        with self._reading("reading the calibration record") as conn:
            return [_calibration_record(row) for row in conn.execute(query).all()]

    # ----------------------------------------------------------------------- anomalies
    def record_anomalies(self, items: Iterable[Mapping[str, Any]], *,
                         actor: str) -> list[AnomalyRecord]:
        """Record spend anomalies (``economics.anomalies.Anomaly.as_dict`` rows) and audit
        them in one entry. Idempotent per (granularity, scope, key, period start): one
        already recorded is left as it was. Returns the rows this call added."""
        _require_text("actor", actor)
        values = [_anomaly_values(item) for item in items]
        if not values:
            return []

        def work(conn: Connection, now: datetime) -> list[AnomalyRecord]:
            added = []
            for row in values:
                existing = conn.execute(sa.select(anomalies.c.anomaly_id).where(
                    anomalies.c.granularity == row["granularity"],
                    anomalies.c.scope == row["scope"], anomalies.c.key == row["key"],
                    anomalies.c.period_start == row["period_start"])).first()
                if existing is not None:
                    continue
                anomaly_id = conn.execute(sa.insert(anomalies).values(
                    **row, detected_by=actor, detected_at=now)).inserted_primary_key[0]
                added.append(_anomaly_record(conn.execute(
                    sa.select(anomalies).where(anomalies.c.anomaly_id == anomaly_id)).one()))
            if added:
                self._audit(conn, now, actor=actor, action="anomalies.record",
                            subject=f"{len(added)} spend anomalies", payload={"anomalies": [
                                {"granularity": a.granularity, "scope": a.scope, "key": a.key,
                                 "period_start": a.period_start.isoformat(),
                                 "spend_usd": a.spend_usd, "baseline_usd": a.baseline_usd}
                                for a in added]})
            return added

        return self._write("recording spend anomalies", work)

    def list_anomalies(self, *, since: datetime | None = None, until: datetime | None = None,
                       scope: str | None = None,
                       granularity: str | None = None) -> list[AnomalyRecord]:
        """Recorded anomalies whose period starts in [since, until), oldest first."""
        query = sa.select(anomalies).order_by(anomalies.c.period_start, anomalies.c.granularity,
                                              anomalies.c.scope, anomalies.c.key)
        if since is not None:
            query = query.where(anomalies.c.period_start >= since)
        if until is not None:
            query = query.where(anomalies.c.period_start < until)
        if scope is not None:
            query = query.where(anomalies.c.scope == scope)
        if granularity is not None:
            query = query.where(anomalies.c.granularity == granularity)
        with self._reading("reading spend anomalies") as conn:
            return [_anomaly_record(row) for row in conn.execute(query).all()]

    # -------------------------------------------------------------------------- leases
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or renew, for the same holder) a named lease for ``ttl_s`` seconds.

        False while another holder's lease has not expired; an expired lease is taken over.
        """
        _require_text("lease name", name)
        _require_text("lease holder", holder)
        if not ttl_s > 0:
            raise StoreError(f"lease ttl_s must be positive (got {ttl_s!r})")

        def work(conn: Connection, now: datetime) -> bool:
            expires = now + timedelta(seconds=ttl_s)
            current = conn.execute(sa.select(leases).where(leases.c.name == name)).one_or_none()
            if current is None:
                conn.execute(sa.insert(leases).values(name=name, holder=holder,
                                                      acquired_at=now, expires_at=expires))
                return True
            expired = current.expires_at <= now
            if current.holder != holder and not expired:
                return False
            # A live renewal keeps its original start; a takeover (or a lapsed lease) is new.
            acquired_at = current.acquired_at if current.holder == holder and not expired else now
            # Conditional on what was read, so the takeover is atomic even without the lock.
            taken = conn.execute(
                sa.update(leases)
                .where(leases.c.name == name, leases.c.holder == current.holder,
                       leases.c.expires_at == current.expires_at)
                .values(holder=holder, acquired_at=acquired_at, expires_at=expires)
            )
            return taken.rowcount == 1

        return self._write(f"acquiring lease {name!r}", work)

    def release_lease(self, name: str, holder: str) -> bool:
        """Give a lease back; False if ``holder`` does not hold it (nothing changes)."""

        def work(conn: Connection, _now: datetime) -> bool:
            gone = conn.execute(
                sa.delete(leases).where(leases.c.name == name, leases.c.holder == holder)
            )
            return gone.rowcount == 1

        return self._write(f"releasing lease {name!r}", work)

    def get_lease(self, name: str) -> LeaseRecord | None:
        """The lease row as stored (it may have expired: compare ``expires_at``)."""
        with self._reading(f"reading lease {name!r}") as conn:
            row = conn.execute(sa.select(leases).where(leases.c.name == name)).one_or_none()
            if row is None:
                return None
            return LeaseRecord(row.name, row.holder, row.acquired_at, row.expires_at)

    # --------------------------------------------------------------------------- audit
    def audit_append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        payload: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry to the hash-chained audit log (payload stored as canonical JSON)."""
        _require_text("actor", actor)
        _require_text("action", action)
        _require_text("subject", subject)
        if is_store_action(action):
            raise StoreError(f"audit action {action!r} is the store's own: it is written only "
                             "with the change it records (the replay in verify_audit trusts it)")

        def work(conn: Connection, now: datetime) -> AuditEntry:
            return self._audit(conn, now, actor=actor, action=action, subject=subject,
                               payload=payload)

        return self._write(f"appending audit entry {action!r}", work)

    def audit_entries(
        self,
        *,
        subject: str | None = None,
        action: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Audit entries in seq order (or newest first), optionally filtered."""
        query = sa.select(audit_entries).where(audit_entries.c.seq > after_seq)
        if subject is not None:
            query = query.where(audit_entries.c.subject == subject)
        if action is not None:
            query = query.where(audit_entries.c.action == action)
        order = audit_entries.c.seq.desc() if newest_first else audit_entries.c.seq
        query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self._reading("reading the audit log") as conn:
            return [row_to_entry(row) for row in conn.execute(query).all()]

    def verify_audit(self, *, anchors: Iterable[Anchor] = (), state: bool = True,
                     anchor_file: bool = True) -> AuditVerification:
        """Recompute the chain (the first entry altered, removed or moved); replay the log
        against the state tables (``store.replay``: every disagreement, by name); and check
        each anchor (``anchors``, and those of this store's anchor file unless
        ``anchor_file`` is False): the log must still hold that entry with that hash."""
        problems: list[str] = []
        anchors = list(anchors)
        if anchor_file and self._anchor_file is not None:
            try:
                anchors += read_anchor_file(self._anchor_file)
            except (OSError, StoreError) as err:
                problems.append(f"the anchor file cannot be read: {err}")
        with self._reading("verifying the audit log") as conn:
            head = conn.execute(
                sa.select(audit_head.c.last_seq, audit_head.c.last_hash)
                .where(audit_head.c.slot == 1)
            ).one_or_none()
            rows = conn.execute(sa.select(audit_entries).order_by(audit_entries.c.seq)).all()
            chain = verify_chain(rows, head)
            if not chain.ok and chain.reason:
                problems.append(chain.reason)
            problems += _anchor_problems(rows, anchors)
            if state:
                entries = []
                for row in rows:
                    try:
                        entries.append(row_to_entry(row))
                    except ValueError:
                        continue  # the chain check names it
                problems += state_problems(entries, StateRows(
                    policies=conn.execute(sa.select(policies).order_by(policies.c.version)
                                          ).all(),
                    active=conn.execute(sa.select(active_policy)).one_or_none(),
                    activations=conn.execute(sa.select(activations)
                                             .order_by(activations.c.activation_id)).all(),
                    proposals=conn.execute(sa.select(proposals)
                                           .order_by(proposals.c.created_at,
                                                     proposals.c.proposal_id)).all(),
                    approvals=conn.execute(sa.select(approvals)).all(),
                    evidence=conn.execute(sa.select(evidence).order_by(evidence.c.sha256)
                                          ).all(),
                    rollouts=conn.execute(sa.select(rollouts)).all(),
                    api_keys=conn.execute(sa.select(api_keys)).all(),
                ))
        return AuditVerification(
            ok=chain.ok and not problems, entries_checked=chain.entries_checked,
            first_bad_seq=chain.first_bad_seq,
            reason=chain.reason or (problems[0] if problems else None),
            problems=tuple(problems), anchors_checked=len(anchors))

    def audit_anchor(self) -> Anchor:
        """The chain head now (the last entry's seq, hash and time) as an anchor to keep
        outside the database; seq 0 and the genesis hash for an empty log."""
        with self._reading("reading the audit chain head") as conn:
            last = conn.execute(sa.select(audit_entries.c.seq, audit_entries.c.entry_hash,
                                          audit_entries.c.ts)
                                .order_by(audit_entries.c.seq.desc()).limit(1)).one_or_none()
        if last is None:
            return Anchor(0, GENESIS_HASH, anchored_at=self._now().isoformat())
        return Anchor(last.seq, last.entry_hash, last.ts.isoformat(),
                      self._now().isoformat())

    def _write_anchor(self) -> None:
        """Append the chain head to the anchor file, after a change committed. A failure
        is logged, not raised: the change itself stands (``verify_audit`` checks the file)."""
        if self._anchor_file is None:
            return
        try:
            append_anchor(self._anchor_file, self.audit_anchor(), anchored_at=self._now())
        except (OSError, StoreError) as err:
            _log.warning("could not append the audit anchor to %s: %s", self._anchor_file, err)

    # ------------------------------------------------------------------------- lookups
    @staticmethod
    def _policy_row(conn: Connection, version: int) -> Row[Any]:
        row = conn.execute(sa.select(policies).where(policies.c.version == version)).one_or_none()
        if row is None:
            raise NotFoundError(f"policy v{version} is not in the store")
        return row

    @staticmethod
    def _proposal_row(conn: Connection, proposal_id: str) -> Row[Any]:
        row = conn.execute(
            sa.select(proposals).where(proposals.c.proposal_id == proposal_id)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"proposal {proposal_id} is not in the store")
        return row

    @staticmethod
    def _evidence_row(conn: Connection, sha256: str) -> Row[Any]:
        row = conn.execute(sa.select(evidence).where(evidence.c.sha256 == sha256)).one_or_none()
        if row is None:
            raise NotFoundError(f"evidence bundle {sha256} is not in the store")
        return row


def _anchor_problems(rows: Sequence[Row[Any]], anchors: Iterable[Anchor]) -> list[str]:
    """Each anchor whose entry the log no longer holds with that hash."""
    hashes = {row.seq: row.entry_hash for row in rows}
    last = max(hashes, default=0)
    problems = []
    for anchor in anchors:
        where = f"anchor {anchor.entry_hash[:12]}@{anchor.seq}"
        if anchor.source:
            where += f" ({anchor.source})"
        if anchor.seq == 0:
            if not GENESIS_HASH.startswith(anchor.entry_hash):
                problems.append(f"{where}: entry 0 is the genesis hash {GENESIS_HASH[:12]}")
            continue
        found = hashes.get(anchor.seq)
        if found is None:
            problems.append(f"{where}: the log ends at entry {last}, so entry {anchor.seq} is "
                            "gone: the log was truncated" if anchor.seq > last else
                            f"{where}: entry {anchor.seq} is missing from the log")
        elif not anchor.matches(found):
            problems.append(f"{where}: entry {anchor.seq} now hashes to {found[:12]}: the log "
                            f"was rewritten at or before entry {anchor.seq}")
    return problems


def _state(value: ProposalState | str) -> ProposalState:
    try:
        return ProposalState(value)
    except ValueError:
        names = ", ".join(s.value for s in ProposalState)
        raise StoreError(f"unknown proposal state {value!r} (states: {names})") from None


def _verdict(value: GateVerdict | str) -> GateVerdict:
    try:
        return GateVerdict(value)
    except ValueError:
        names = ", ".join(v.value for v in GateVerdict)
        raise StoreError(f"unknown gate verdict {value!r} (verdicts: {names})") from None


def display_url(url: str) -> str:
    """A database URL with its password masked: how the store (and the CLI) print one."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"
