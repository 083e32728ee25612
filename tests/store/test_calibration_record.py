"""The calibration record: one row per verify look, predicted against realised.

Runs against SQLite always, and against PostgreSQL too when AUTOPILOT_TEST_PG_URL is set.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa

from policies.policy import Policy, load_policy
from store import SCHEMA_VERSION, CalibrationRecord, Store, StoreError
from store.schema import calibration, schema_meta

STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"
WINDOW = "2026-11-20"


@pytest.fixture
def v1() -> Policy:
    return load_policy(STARTER_POLICY)


def _proposal(store: Store, v1: Policy, *, predicted: dict, quant: str = "int8",
              lever: str = "quantization") -> str:
    store.put_policy(v1)
    if store.active_policy() is None:
        store.activate(1, actor="init", reason="initial policy")
    latest = store.list_policies()[-1].policy
    record = store.put_policy(latest.evolve(author="autopilot", quantization={"S": quant}))
    p = store.create_proposal(candidate_version=record.version, baseline_version=1,
                              lever=lever, window=WINDOW, predicted=predicted,
                              actor="autopilot")
    return p.proposal_id


PREDICTED = {"cost_per_green_pr_rel_delta": -0.12,
             "cost_per_green_pr_rel_delta_ci": [-0.15, -0.09], "level": 0.9}


def test_round_trip_reads_the_prediction_from_the_proposal(store: Store, v1: Policy):
    pid = _proposal(store, v1, predicted=PREDICTED)
    rec = store.record_calibration(pid, look=1, realised=-0.03, realised_ci=(-0.08, 0.02),
                                   realised_window="2026-11-21..2026-11-21",
                                   outcome="keep_watching", baseline_tasks=1500,
                                   candidate_tasks=1400, widen=1.5, actor="autopilot-verify")
    assert isinstance(rec, CalibrationRecord)
    assert (rec.proposal_id, rec.lever, rec.look, rec.window) == (pid, "quantization", 1, WINDOW)
    assert (rec.predicted, rec.predicted_low, rec.predicted_high, rec.level) == (
        -0.12, -0.15, -0.09, 0.9)
    assert (rec.realised, rec.realised_low, rec.realised_high) == (-0.03, -0.08, 0.02)
    assert rec.inside is False and rec.widen == 1.5 and rec.outcome == "keep_watching"
    # outside even allowing the realised day's own noise (its interval's side facing the
    # prediction, 0.05): the errors add in quadrature
    assert rec.miss == pytest.approx((0.09 ** 2 - 0.05 ** 2) ** 0.5 / 0.03 - 1.0)
    assert rec.recorded_at.tzinfo is not None
    [read] = store.calibration_records()
    assert read == rec
    assert store.calibration_records(lever="quantization") == [rec]
    assert store.calibration_records(lever="routing") == []
    assert store.calibration_records(proposal_id=pid) == [rec]
    entry = store.audit_entries(subject=pid, action="calibration.record")[-1]
    assert entry.payload["inside"] is False and entry.payload["realised"] == -0.03
    assert store.verify_audit().ok


def test_one_row_per_look_and_inside_when_covered(store: Store, v1: Policy):
    pid = _proposal(store, v1, predicted=PREDICTED)
    first = store.record_calibration(pid, look=1, realised=-0.10, realised_ci=None,
                                     realised_window="2026-11-21..", outcome="keep_watching",
                                     baseline_tasks=10, candidate_tasks=10, actor="v")
    assert first.inside is True and first.miss == 0.0 and first.realised_low is None
    again = store.record_calibration(pid, look=1, realised=0.5, realised_ci=None,
                                     realised_window="2026-11-21..", outcome="verified",
                                     baseline_tasks=10, candidate_tasks=10, actor="v")
    assert again == first  # idempotent per (proposal, look)
    second = store.record_calibration(pid, look=2, realised=-0.2, realised_ci=(-0.22, -0.18),
                                      realised_window="2026-11-21..2026-11-22",
                                      outcome="verified", baseline_tasks=10,
                                      candidate_tasks=20, actor="v")
    assert second.inside is False
    # The same point with a day's noise wide enough to reach the prediction is no miss.
    noisy = store.record_calibration(pid, look=3, realised=-0.2, realised_ci=(-0.3, -0.1),
                                     realised_window="2026-11-21..2026-11-23",
                                     outcome="verified", baseline_tasks=10,
                                     candidate_tasks=30, actor="v")
    assert noisy.inside is True and noisy.miss == 0.0
    assert [r.look for r in store.calibration_records()] == [1, 2, 3]
    assert len(store.audit_entries(action="calibration.record")) == 3


def test_a_prediction_without_interval_records_inside_as_unknown(store: Store, v1: Policy):
    pid = _proposal(store, v1, predicted={"cost_per_green_pr_rel_delta": -0.1})
    rec = store.record_calibration(pid, look=1, realised=-0.1, realised_ci=None,
                                   realised_window="d..", outcome="verified",
                                   baseline_tasks=1, candidate_tasks=1, actor="v")
    assert rec.inside is None and rec.miss is None and rec.predicted_low is None


def test_an_unbounded_side_is_kept_and_covers(store: Store, v1: Policy):
    pid = _proposal(store, v1, predicted={"cost_per_green_pr_rel_delta": -0.1,
                                          "cost_per_green_pr_rel_delta_ci": [-math.inf, 0.05]})
    rec = store.record_calibration(pid, look=1, realised=-0.9, realised_ci=None,
                                   realised_window="d..", outcome="verified",
                                   baseline_tasks=1, candidate_tasks=1, actor="v")
    assert rec.predicted_low == -math.inf and rec.inside is True


def test_bad_calibration_input_is_refused(store: Store, v1: Policy):
    nothing = _proposal(store, v1, predicted={"risk": "low"})
    kw = {"realised_ci": None, "realised_window": "d..", "outcome": "verified",
          "baseline_tasks": 1, "candidate_tasks": 1, "actor": "v"}
    with pytest.raises(StoreError, match="nothing to calibrate"):
        store.record_calibration(nothing, look=1, realised=0.0, **kw)
    pid = _proposal(store, v1, predicted=PREDICTED, quant="int4")
    with pytest.raises(StoreError, match="finite"):
        store.record_calibration(pid, look=1, realised=float("nan"), **kw)
    with pytest.raises(StoreError, match="look"):
        store.record_calibration(pid, look=0, realised=0.0, **kw)
    with pytest.raises(StoreError, match="widen"):
        store.record_calibration(pid, look=1, realised=0.0, widen=0.0, **kw)
    assert store.calibration_records() == []


def test_a_v1_database_gains_the_calibration_table(store_url: str, raw: sa.Engine, v1: Policy):
    Store.open(store_url).close()
    with raw.begin() as conn:  # what a v1 database looked like: no calibration table
        calibration.drop(conn)
        conn.execute(sa.update(schema_meta).values(value="1"))
    with Store.open(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION  # v1 -> v2 -> ... the latest
        pid = _proposal(store, v1, predicted=PREDICTED)
        store.record_calibration(pid, look=1, realised=-0.1, realised_ci=None,
                                 realised_window="d..", outcome="verified",
                                 baseline_tasks=1, candidate_tasks=1, actor="v")
        assert len(store.calibration_records()) == 1
