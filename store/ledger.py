"""The gateway's shared ledger in the store: spend per task and per team-day, and the route
each task started on (issue 15, defect 7).

The gateway's ledger lives in one process that every replica calls (``serving.shared_state``);
that process writes what it recorded here in batches and reads it back when it starts, so a
restarted gateway (or a restarted ledger) keeps every recorded dollar. Spend rows are
*added to*, never overwritten: two writers (two gateways on one store) each add their own
share. A task's route is written once; the first writer wins, as in the gateway. These are
usage records, not changes of state: no audit event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from store.schema import gateway_routes, gateway_spend

__all__ = ["SCOPE_TASK", "SCOPE_TEAM", "LedgerMixin", "RouteRow", "SpendRow"]

SCOPE_TASK, SCOPE_TEAM = "task", "team"


@dataclass(frozen=True)
class SpendRow:
    """Spend of one task (``scope`` task, ``day`` '') or one team-day (``scope`` team)."""

    scope: str
    key: str
    day: str
    usd: float
    tokens: int = 0
    calls: int = 0
    last_attempt: int = 0


@dataclass(frozen=True)
class RouteRow:
    task_id: str
    policy_version: int
    start: int
    start_propensity: float
    shadow_tier: str | None


def _add(conn: Connection, row: SpendRow, now: datetime) -> None:
    t = gateway_spend.c
    where = sa.and_(t.scope == row.scope, t.key == row.key, t.day == row.day)
    updated = conn.execute(sa.update(gateway_spend).where(where).values(
        usd=t.usd + row.usd, tokens=t.tokens + row.tokens, calls=t.calls + row.calls,
        last_attempt=sa.case((t.last_attempt < row.last_attempt, row.last_attempt),
                             else_=t.last_attempt),
        updated_at=now))
    if updated.rowcount == 0:
        conn.execute(sa.insert(gateway_spend).values(
            scope=row.scope, key=row.key, day=row.day, usd=row.usd, tokens=row.tokens,
            calls=row.calls, last_attempt=row.last_attempt, updated_at=now))


class LedgerMixin:
    """The gateway ledger's methods of ``store.Store``."""

    def add_gateway_spend(self, rows: Iterable[SpendRow],
                          routes: Iterable[RouteRow] = ()) -> None:
        """Add each row's spend to what is recorded and record routes not recorded yet, in
        one transaction (a batch is kept whole or not at all)."""
        rows, routes = list(rows), list(routes)
        if not rows and not routes:
            return

        def work(conn: Connection, now: datetime) -> None:
            for row in rows:
                _add(conn, row, now)
            if routes:
                ids = [r.task_id for r in routes]
                known = set(conn.execute(sa.select(gateway_routes.c.task_id)
                                         .where(gateway_routes.c.task_id.in_(ids))).scalars())
                fresh = {r.task_id: r for r in routes if r.task_id not in known}
                if fresh:
                    conn.execute(sa.insert(gateway_routes), [
                        {"task_id": r.task_id, "policy_version": r.policy_version,
                         "start": r.start, "start_propensity": r.start_propensity,
                         "shadow_tier": r.shadow_tier, "created_at": now}
                        for r in fresh.values()])

        self._write("recording the gateway's spend", work)  # type: ignore[attr-defined]

    def gateway_spend(self, *, since_day: str, max_tasks: int) -> list[SpendRow]:
        """Team-day rows from ``since_day`` (YYYY-MM-DD) on, and the ``max_tasks`` task rows
        updated last (the ledger's own bound), oldest first."""
        t = gateway_spend.c
        with self._reading("reading the gateway's spend") as conn:  # type: ignore[attr-defined]
            teams = conn.execute(sa.select(gateway_spend).where(
                t.scope == SCOPE_TEAM, t.day >= since_day)).all()
            tasks = conn.execute(sa.select(gateway_spend).where(t.scope == SCOPE_TASK)
                                 .order_by(t.updated_at.desc()).limit(max_tasks)).all()
        return [SpendRow(r.scope, r.key, r.day, float(r.usd), int(r.tokens), int(r.calls),
                         int(r.last_attempt)) for r in [*teams, *reversed(tasks)]]

    def gateway_routes(self, *, max_tasks: int) -> list[RouteRow]:
        """The ``max_tasks`` routes recorded last, oldest first."""
        t = gateway_routes.c
        with self._reading("reading the gateway's routes") as conn:  # type: ignore[attr-defined]
            rows = conn.execute(sa.select(gateway_routes)
                                .order_by(t.created_at.desc()).limit(max_tasks)).all()
        return [RouteRow(r.task_id, int(r.policy_version), int(r.start),
                         float(r.start_propensity), r.shadow_tier) for r in reversed(rows)]
