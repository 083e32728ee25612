"""Progressive delivery in the store: a canary's share, its steps, and how it ends.

A rollout starts from an approved proposal whose baseline is the active policy: the
proposal moves to ``canary`` and the gateway serves its candidate to ``share`` of new tasks
(a stable hash of the task id), the rest stay on the active policy. ``advance_rollout``
raises the share; ``complete_rollout`` promotes the candidate (the same activation and
evidence checks as a direct promotion, one transaction); ``abort_rollout`` ends it with the
proposal ``rolled_back`` while the active pointer never moved. Every step is an audit event
in the same transaction. At most one rollout runs at a time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from store.errors import PromotionRefused, StoreError
from store.records import ActivationRecord, ProposalState, RolloutRecord
from store.schema import active_policy, rollouts

__all__ = ["RolloutsMixin"]

RUNNING, COMPLETED, ABORTED = "running", "completed", "aborted"


def _record(row: Row[Any]) -> RolloutRecord:
    return RolloutRecord(row.proposal_id, row.candidate_version, row.baseline_version,
                         float(row.share), int(row.step), row.state, row.started_at,
                         row.updated_at)


def _row(conn: Connection, proposal_id: str) -> Row[Any] | None:
    return conn.execute(sa.select(rollouts).where(rollouts.c.proposal_id == proposal_id)
                        ).one_or_none()


def _check_share(share: float) -> float:
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise StoreError(f"a rollout share must be in (0, 1] (got {share})")
    return share


class RolloutsMixin:
    """The rollout methods of ``store.Store`` (kept apart: one concern, one module)."""

    def current_rollout(self) -> RolloutRecord | None:
        """The running rollout, or None."""
        with self._reading("reading the running rollout") as conn:  # type: ignore[attr-defined]
            row = conn.execute(sa.select(rollouts).where(rollouts.c.state == RUNNING)
                               ).one_or_none()
            return None if row is None else _record(row)

    def get_rollout(self, proposal_id: str) -> RolloutRecord | None:
        with self._reading(f"reading the rollout of {proposal_id}") as conn:  # type: ignore[attr-defined]
            row = _row(conn, proposal_id)
            return None if row is None else _record(row)

    def start_rollout(self, proposal_id: str, *, share: float, actor: str,
                      reason: str) -> RolloutRecord:
        """An approved proposal's candidate starts serving ``share`` of new tasks."""
        share = _check_share(share)

        def work(conn: Connection, now: datetime) -> RolloutRecord:
            row = self._proposal_row(conn, proposal_id)  # type: ignore[attr-defined]
            existing = conn.execute(sa.select(rollouts).where(rollouts.c.state == RUNNING)
                                    ).one_or_none()
            if existing is not None:
                if existing.proposal_id == proposal_id:
                    return _record(existing)  # idempotent: already started
                raise PromotionRefused(f"proposal {proposal_id}: the rollout of "
                                       f"{existing.proposal_id} is still running")
            current = conn.execute(sa.select(active_policy)).one_or_none()
            if current is None or current.version != row.baseline_version:
                raise PromotionRefused(
                    f"proposal {proposal_id} was gated against policy v{row.baseline_version} "
                    f"but v{None if current is None else current.version} is active now")
            # The same audit and evidence checks as a promotion, before any traffic sees the
            # candidate.
            self._check_promotion_evidence(conn, row, current.version)  # type: ignore[attr-defined]
            self._check_promotion_audit(conn, row, current.version)  # type: ignore[attr-defined]
            conn.execute(sa.insert(rollouts).values(
                proposal_id=proposal_id, candidate_version=row.candidate_version,
                baseline_version=row.baseline_version, share=share, step=1, state=RUNNING,
                started_at=now, updated_at=now))
            self._move_proposal(conn, now, row, ProposalState.CANARY, actor=actor,  # type: ignore[attr-defined]
                                reason=reason, extra_payload={"share": share, "step": 1})
            return _record(_row(conn, proposal_id))

        return self._write(f"starting the rollout of {proposal_id}", work)  # type: ignore[attr-defined]

    def _running(self, conn: Connection, proposal_id: str) -> Row[Any]:
        row = _row(conn, proposal_id)
        if row is None or row.state != RUNNING:
            state = "none" if row is None else row.state
            raise StoreError(f"proposal {proposal_id} has no running rollout (state {state})")
        return row

    def advance_rollout(self, proposal_id: str, *, share: float, actor: str,
                        reason: str) -> RolloutRecord:
        """The next step: a larger share of new tasks on the candidate."""
        share = _check_share(share)

        def work(conn: Connection, now: datetime) -> RolloutRecord:
            row = self._running(conn, proposal_id)
            if share <= row.share:
                raise StoreError(f"rollout of {proposal_id}: a step raises the share "
                                 f"({row.share:.0%} -> {share:.0%} is not a raise)")
            conn.execute(sa.update(rollouts).where(rollouts.c.proposal_id == proposal_id)
                         .values(share=share, step=row.step + 1, updated_at=now))
            self._audit(conn, now, actor=actor, action="rollout.advance",  # type: ignore[attr-defined]
                        subject=proposal_id,
                        payload={"from": row.share, "to": share, "step": row.step + 1,
                                 "reason": reason})
            return _record(_row(conn, proposal_id))

        return self._write(f"advancing the rollout of {proposal_id}", work)  # type: ignore[attr-defined]

    def complete_rollout(self, proposal_id: str, *, actor: str,
                         reason: str) -> ActivationRecord:
        """Promote the canary's candidate (the proposal becomes ``active``)."""

        def work(conn: Connection, now: datetime) -> ActivationRecord:
            row = self._running(conn, proposal_id)
            conn.execute(sa.update(rollouts).where(rollouts.c.proposal_id == proposal_id)
                         .values(share=1.0, state=COMPLETED, updated_at=now))
            return self._activate(conn, now, row.candidate_version, actor, reason,  # type: ignore[attr-defined]
                                  proposal_id)

        record = self._write(f"completing the rollout of {proposal_id}", work)  # type: ignore[attr-defined]
        self._write_anchor()  # type: ignore[attr-defined]
        return record

    def abort_rollout(self, proposal_id: str, *, actor: str, reason: str) -> RolloutRecord:
        """Stop the canary: new tasks all go to the active policy, which never moved."""

        def work(conn: Connection, now: datetime) -> RolloutRecord:
            row = self._running(conn, proposal_id)
            conn.execute(sa.update(rollouts).where(rollouts.c.proposal_id == proposal_id)
                         .values(state=ABORTED, updated_at=now))
            proposal = self._proposal_row(conn, proposal_id)  # type: ignore[attr-defined]
            self._move_proposal(conn, now, proposal, ProposalState.ROLLED_BACK, actor=actor,  # type: ignore[attr-defined]
                                reason=reason, extra_payload={"share": row.share,
                                                              "step": row.step,
                                                              "stopped_at_canary": True})
            return _record(_row(conn, proposal_id))

        record = self._write(f"aborting the rollout of {proposal_id}", work)  # type: ignore[attr-defined]
        self._write_anchor()  # type: ignore[attr-defined]
        return record
