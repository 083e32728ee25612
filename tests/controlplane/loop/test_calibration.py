"""The calibration record end to end: the factor rule (pure), verify writing a row, the
nightly's propose task passing the factors, and a widened lever getting wider intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.loop.calibration import (
    MAX_FACTOR,
    calibration_summary,
    factor_for,
    inflation_factor,
    inflation_factors,
    latest_looks,
    needed_inflation,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Row:
    """Anything with a CalibrationRecord's attributes will do for the pure rule."""

    proposal_id: str
    realised: float
    predicted: float = -0.10
    predicted_low: float | None = -0.12
    predicted_high: float | None = -0.08
    lever: str = "routing"
    look: int = 1
    widen: float = 1.0
    day: int = 0
    inside: bool | None = field(init=False)
    record_id: int = 0

    def __post_init__(self):
        self.recorded_at = T0 + timedelta(days=self.day, minutes=self.look)
        lo, hi = self.predicted_low, self.predicted_high
        self.inside = None if lo is None else lo <= self.realised <= hi

    @property
    def miss(self):
        n = needed_inflation(self)
        return None if n is None else max(0.0, n / self.widen - 1.0)


def hits(n, *, start=0, lever="routing"):
    return [Row(f"h{start + i}", realised=-0.10, day=start + i, lever=lever) for i in range(n)]


# ------------------------------------------------------------------------ the pure rule
def test_no_record_or_only_hits_is_calibrated():
    assert inflation_factor([]) == 1.0
    assert inflation_factor(hits(5)) == 1.0
    assert inflation_factors(hits(3) + hits(2, lever="cache")) == {"cache": 1.0, "routing": 1.0}


def test_needed_inflation_is_on_the_estimators_own_scale():
    # realised -0.04 is 3 half-widths (0.02) above the point -0.10: needs 3x
    assert needed_inflation(Row("a", realised=-0.04)) == pytest.approx(3.0)
    assert needed_inflation(Row("a", realised=-0.11)) == pytest.approx(0.5)
    # recorded already widened 2x: the estimator alone needed 6x
    assert needed_inflation(Row("a", realised=-0.04, widen=2.0)) == pytest.approx(6.0)
    assert needed_inflation(Row("a", realised=-0.04, predicted_low=None)) is None
    zero = Row("a", realised=-0.04, predicted_low=-0.10, predicted_high=-0.10)
    assert needed_inflation(zero) == MAX_FACTOR
    assert needed_inflation(Row("a", realised=5.0, predicted_high=float("inf"))) == 0.0


def test_a_miss_widens_by_its_size_and_more_misses_widen_more():
    one = inflation_factor(hits(3) + [Row("m", realised=-0.04, day=10)])
    assert one == pytest.approx(3.0)
    bigger = inflation_factor(hits(3) + [Row("m", realised=0.0, day=10)])
    assert bigger == pytest.approx(5.0) and bigger > one
    # one small old miss among many hits is what a 90% interval does: calibrated
    assert inflation_factor([Row("m", realised=-0.04, day=0)] + hits(9, start=1)) == 1.0
    # two misses among a few hits: the quantile reaches the larger one
    two = inflation_factor([Row("a", realised=-0.04, day=0), Row("b", realised=0.0, day=1)]
                           + hits(2, start=2))
    assert two == pytest.approx(5.0)


def test_the_factor_decays_back_to_one_as_hits_return():
    record = [Row("m", realised=-0.04, day=0)]
    factors = []
    for k in range(1, 12):
        factors.append(inflation_factor(record))
        record.append(Row(f"h{k}", realised=-0.10, day=k))
    assert factors[0] == pytest.approx(3.0)
    assert factors == sorted(factors, reverse=True)
    assert factors[-1] == 1.0
    first_calibrated = factors.index(1.0)
    assert 2 <= first_calibrated <= 10  # widened for a few changes, not forever


def test_a_widened_lever_stays_widened_while_the_estimator_alone_still_misses():
    # predictions recorded at 3x keep covering, but at 1x they would have missed: stay wide
    record = [Row(f"w{k}", realised=-0.04, predicted_low=-0.16, predicted_high=-0.04,
                  widen=3.0, day=k) for k in range(5)]
    assert all(r.inside for r in record)
    assert inflation_factor(record) == pytest.approx(3.0)


def test_only_the_latest_look_of_a_change_counts_and_as_of_cuts_the_record():
    looks = [Row("p", realised=-0.04, look=1), Row("p", realised=-0.10, look=2)]
    assert [r.look for r in latest_looks(looks)] == [2]
    assert inflation_factor(looks) == 1.0
    record = hits(2) + [Row("m", realised=0.0, day=5)]
    assert inflation_factors(record, as_of=T0 + timedelta(days=3)) == {"routing": 1.0}
    assert inflation_factors(record)["routing"] > 1.0


def test_factor_for_a_joint_candidate_takes_the_largest():
    factors = {"routing": 2.0, "cache": 1.5}
    assert factor_for(factors, "routing") == 2.0
    assert factor_for(factors, "guardrails") == 1.0
    assert factor_for(factors, "all") == 2.0
    assert factor_for(factors, "cache", names=("cache", "routing")) == 2.0
    assert factor_for(None, "routing") == 1.0


def test_summary_per_lever():
    record = hits(3) + [Row("m", realised=0.0, day=9)] + hits(2, lever="cache")
    by = {s.lever: s for s in calibration_summary(record)}
    r = by["routing"]
    assert (r.changes, r.inside, r.misses) == (4, 3, 1)
    assert r.coverage == pytest.approx(0.75) and r.factor == pytest.approx(5.0)
    assert r.worst_miss == pytest.approx(4.0) and r.median_width == pytest.approx(0.04)
    assert by["cache"].factor == 1.0 and by["cache"].coverage == 1.0


# ----------------------------------------------------------------- the estimator widened
def _window(tmp_path, tasks=600, seed=5):
    from experiments.window import load_estimator_window
    from policies.policy import load_policy
    from serving.testing import tiny_manifest
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    fleet = tiny_manifest("calib-fleet")
    policy = load_policy("""
apiVersion: autopilot/v1
kind: Policy
metadata: {version: 1, author: test, created: 2026-11-01T00:00:00Z}
spec:
  routing: {router: score, escalation: [S, M, L], weights: {difficulty: 1.0},
            thresholds: [1.5, 2.5], max_attempts: 3, exploration_rate: 0.3}
  guardrails: {max_attempts_per_task: 5}
""")
    spans = tmp_path / "spans.jsonl"
    write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=tasks, seed=seed)), spans)
    ingest_paths([spans], tmp_path / "tel")
    return fleet, policy, load_estimator_window(tmp_path / "tel", fleet=fleet)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _window(tmp_path_factory.mktemp("calib"))


def test_estimate_and_compare_scale_half_widths_around_the_point(small):
    from experiments import compare, estimate

    fleet, policy, window = small
    candidate = policy.evolve(author="t", routing=policy.spec.routing.model_copy(
        update={"escalation": ["M", "L"], "thresholds": [2.5]}))
    active = estimate(policy, window, fleet, bootstrap=60)
    plain = estimate(candidate, window, fleet, bootstrap=60)
    wide = estimate(candidate, window, fleet, bootstrap=60, widen=2.0)
    assert wide.widen == 2.0 and plain.widen == 1.0
    for name in ("green_prs", "fpy", "cost_per_green_pr", "spend_usd"):
        a, b = getattr(plain, name), getattr(wide, name)
        assert b.point == pytest.approx(a.point)
        assert b.high - b.point == pytest.approx(2 * (a.high - a.point))
        assert b.point - b.low == pytest.approx(2 * (a.point - a.low))
    d0, d2 = compare(plain, active), compare(wide, active)
    for name in ("green_prs", "fpy", "cost_per_green_pr"):
        a, b = getattr(d0, name), getattr(d2, name)
        assert b.point == pytest.approx(a.point)
        assert b.width == pytest.approx(2 * a.width)
    with pytest.raises(ValueError, match="widen"):
        estimate(candidate, window, fleet, bootstrap=10, widen=0.0)


def test_a_lever_with_misses_gets_wider_intervals_in_the_search(small):
    from experiments.search import search_candidates

    fleet, policy, window = small
    kw = {"levers": ["routing", "cache"], "candidates": 6, "trials": 2, "per_trial": 6,
          "bootstrap": 60, "executor": "inline", "progress": False, "seed": 1}
    record = hits(2) + [Row("m", realised=0.0, day=5)]  # routing missed by 5 half-widths
    widen = inflation_factors(record)
    assert widen == {"routing": pytest.approx(5.0)}
    base = {c.policy.content_hash: c for c in search_candidates(window, fleet, policy, **kw)}
    wide = search_candidates(window, fleet, policy, widen=widen, **kw)
    assert {c.lever for c in wide} >= {"routing"}
    compared = 0
    for c in wide:
        b = base.get(c.policy.content_hash)
        if b is None:
            continue
        compared += 1
        expect = 5.0 if c.lever == "routing" else 1.0
        assert c.estimate.widen == pytest.approx(expect)
        assert c.deltas.cost_per_green_pr.point == pytest.approx(b.deltas.cost_per_green_pr.point)
        assert c.deltas.cost_per_green_pr.width == pytest.approx(
            expect * b.deltas.cost_per_green_pr.width)
    assert compared


# --------------------------------------------------------------- the loop writes and reads
def _promoted(tmp_path, predicted):
    from contracts.manifest import load_fleet
    from controlplane.bootstrap import initialise_state
    from controlplane.settings import StateDir
    from store import Decision, GateVerdict, ProposalState, Store
    from telemetry.ingest import ingest_paths
    from telemetry.synthetic import WorkloadShape, simulate_spans, write_spans

    state = StateDir(tmp_path / "state")
    initialise_state(state)
    fleet = load_fleet(state.fleet_path)
    store = Store.open(state.store_url())
    v1 = store.active_policy().policy
    v2 = v1.evolve(author="autopilot-nightly", routing=v1.spec.routing.model_copy(
        update={"escalation": ["L", "M", "S"]}))
    store.put_policy(v2)
    p = store.create_proposal(candidate_version=2, baseline_version=1, lever="routing",
                              window="2026-11-20", actor="autopilot-nightly",
                              predicted=predicted)
    assert store.get_proposal(p.proposal_id).state == ProposalState.PROPOSED
    store.record_gate(p.proposal_id, GateVerdict.PASSED, actor="gates")
    store.transition_proposal(p.proposal_id, ProposalState.AWAITING_APPROVAL, actor="n")
    store.record_decision(p.proposal_id, approver="alice", decision=Decision.APPROVE, reason="ok")
    store.promote(p.proposal_id, actor="n", reason="approved")
    for day, policy, seed in (("2026-11-20", v1, 1), ("2026-11-21", v2, 2)):
        f = state.spans_dir / f"{day}.jsonl"
        write_spans(simulate_spans(policy, fleet, WorkloadShape(tasks=800, day=day, seed=seed)),
                    f)
        ingest_paths([f], state.telemetry_dir)
    return state, store, fleet, p.proposal_id


def test_verify_writes_a_calibration_row_and_the_record_widens_that_lever(tmp_path):
    from controlplane.loop.verify_adapter import verify_promoted

    # Predicted 10% cheaper [-12%, -8%]; the candidate (top tier first) costs far more.
    state, store, fleet, pid = _promoted(tmp_path, {
        "cost_per_green_pr_rel_delta": -0.10, "cost_per_green_pr_rel_delta_ci": [-0.12, -0.08],
        "level": 0.9, "lever": "routing"})
    result = verify_promoted(state, store, fleet, since="2026-11-21", until="2026-11-21",
                             actor="autopilot-verify")
    [row] = store.calibration_records()
    stats = result["stats"]
    assert row.proposal_id == pid and row.lever == "routing" and row.look == 1
    assert (row.predicted, row.predicted_low, row.predicted_high) == (-0.10, -0.12, -0.08)
    assert row.realised == pytest.approx(stats["rel_delta"])
    assert [row.realised_low, row.realised_high] == pytest.approx(stats["rel_delta_ci"])
    assert row.inside is False and row.realised > row.predicted_high
    assert row.outcome == result["outcome"] and row.widen == 1.0
    assert row.realised_window == "2026-11-21..2026-11-21"
    assert result["calibration"]["inside"] is False
    factors = inflation_factors(store.calibration_records())
    assert factors["routing"] == MAX_FACTOR or factors["routing"] > 3.0
    assert store.verify_audit().ok


def test_the_propose_task_passes_the_records_factors_to_the_search(tmp_path, monkeypatch):
    import experiments.search as search_module
    from controlplane.flows import propose
    from controlplane.loop.context import LoopContext
    from experiments.search import SearchResult

    state, store, _fleet, pid = _promoted(tmp_path, {
        "cost_per_green_pr_rel_delta": -0.10, "cost_per_green_pr_rel_delta_ci": [-0.12, -0.08]})
    store.record_calibration(pid, look=1, realised=0.02, realised_ci=None,
                             realised_window="2026-11-21..", outcome="keep_watching",
                             baseline_tasks=10, candidate_tasks=10, actor="test")
    seen = {}

    def fake_search(window, fleet, active, **kw):
        seen.update(kw)
        return SearchResult()

    monkeypatch.setattr(search_module, "search_candidates", fake_search)
    with LoopContext.open(state.root) as ctx:
        found = propose.fn(None, ctx, None, ["routing"], {"seed": 0})
    assert seen["widen"] == {"routing": pytest.approx(6.0)}  # 0.12 off, half-width 0.02
    assert found.widen == seen["widen"]


def test_a_days_noise_is_not_charged_to_a_tight_prediction():
    """An exploration change predicted at +2.0% [+1.9, +2.1] realised -1.6% [-9.8, +7.3] on
    one day: the realised figure's own noise covers the gap, so it is no miss and the lever
    is not widened tenfold (before: needed = 36, capped at 10, every later interval of the
    lever ten times wider). Errors add in quadrature: sqrt(d**2 - h_real**2) / h_pred."""
    from store.records import realised_gap

    exploration = Row("p-x", realised=-0.016, predicted=0.020, predicted_low=0.019,
                      predicted_high=0.021)
    exploration.realised_low, exploration.realised_high = -0.098, 0.073
    assert needed_inflation(exploration) == 0.0
    # A real miss still is one: predicted -50.7% [-55, -46], realised -30% [-33, -27].
    routing = Row("p-r", realised=-0.30, predicted=-0.507, predicted_low=-0.55,
                  predicted_high=-0.46)
    routing.realised_low, routing.realised_high = -0.33, -0.27
    need = needed_inflation(routing)
    assert need == pytest.approx(((0.207 ** 2 - 0.03 ** 2) ** 0.5) / 0.047, rel=1e-6)
    assert need > 4
    # Without a realised interval the rule is the plain one.
    assert realised_gap(-0.10, -0.12, -0.08, -0.13) == pytest.approx(1.5)
    assert realised_gap(-0.10, -0.12, -0.08, -0.13, -0.15, -0.11) == pytest.approx(
        (0.03 ** 2 - 0.02 ** 2) ** 0.5 / 0.02)
    assert realised_gap(-0.10, None, None, -0.13) is None
