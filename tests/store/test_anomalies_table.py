"""Spend anomalies in the store: recorded once per (granularity, scope, key, period start),
audited, listed by window; a v2 database gains the table on open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from store import SCHEMA_VERSION, AnomalyRecord, Store, StoreError
from store.schema import anomalies, schema_meta

HOUR = datetime(2026, 11, 9, 14, tzinfo=UTC)


def anomaly(**change) -> dict:
    row = {"granularity": "hour", "scope": "team", "key": "search", "period_start": HOUR,
           "spend_usd": 6.0, "baseline_usd": 1.0, "threshold_usd": 3.0, "history": 7}
    return {**row, **change}


def test_recorded_once_per_period_and_audited(store: Store):
    first = store.record_anomalies([anomaly(), anomaly(scope="family", key="list_ops")],
                                   actor="nightly")
    assert [(a.scope, a.key) for a in first] == [("team", "search"), ("family", "list_ops")]
    assert isinstance(first[0], AnomalyRecord) and first[0].ratio == 6.0
    assert first[0].period_start == HOUR and first[0].detected_by == "nightly"
    # The same anomaly again (a rerun), with other figures: kept as first recorded.
    again = store.record_anomalies([anomaly(spend_usd=9.0), anomaly(granularity="day",
                                                                    period_start=HOUR.replace(
                                                                        hour=0))],
                                   actor="cli")
    assert [(a.granularity, a.key) for a in again] == [("day", "search")]
    rows = store.list_anomalies()
    assert len(rows) == 3 and rows[1].spend_usd == 6.0
    entries = [e for e in store.audit_entries() if e.action == "anomalies.record"]
    assert len(entries) == 2 and len(entries[0].payload["anomalies"]) == 2
    assert store.verify_audit().ok
    assert store.record_anomalies([anomaly()], actor="cli") == []
    assert len([e for e in store.audit_entries() if e.action == "anomalies.record"]) == 2


def test_listed_by_window_scope_and_granularity(store: Store):
    store.record_anomalies([anomaly(period_start=HOUR + timedelta(hours=h), key=f"k{h}")
                            for h in range(3)] + [anomaly(scope="tier", key="L")],
                           actor="t")
    window = store.list_anomalies(since=HOUR + timedelta(hours=1),
                                  until=HOUR + timedelta(hours=2))
    assert [a.key for a in window] == ["k1"]
    assert [a.key for a in store.list_anomalies(scope="tier")] == ["L"]
    assert store.list_anomalies(granularity="day") == []
    assert store.list_anomalies()[0].as_dict()["period_start"] == HOUR.isoformat()


def test_a_pandas_timestamp_is_accepted_and_bad_rows_refuse_the_batch(store: Store):
    stamp = pd.Timestamp("2026-11-09T15:00Z")
    [row] = store.record_anomalies([anomaly(period_start=stamp)], actor="t")
    assert row.period_start == stamp.to_pydatetime()
    for bad, match in ((anomaly(granularity="week"), "granularity"),
                       (anomaly(period_start=datetime(2026, 11, 9)), "aware"),
                       (anomaly(spend_usd=float("nan")), "spend_usd"),
                       (anomaly(history=-1), "history"),
                       ({"scope": "team"}, "needs")):
        with pytest.raises(StoreError, match=match):
            store.record_anomalies([anomaly(key="fine"), bad], actor="t")
    assert [a.key for a in store.list_anomalies()] == ["search"]
    with pytest.raises(StoreError, match="actor"):
        store.record_anomalies([anomaly()], actor="")


def test_a_v2_database_gains_the_anomalies_table(store_url: str, raw: sa.Engine):
    Store.open(store_url).close()
    with raw.begin() as conn:  # what a v2 database looked like: no anomalies table
        anomalies.drop(conn)
        conn.execute(sa.update(schema_meta).values(value="2"))
    with raw.connect() as conn:
        assert "anomalies" not in sa.inspect(conn).get_table_names()
    with Store.open(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION >= 3
        assert len(store.record_anomalies([anomaly()], actor="t")) == 1
    with raw.connect() as conn:
        assert "anomalies" in sa.inspect(conn).get_table_names()
