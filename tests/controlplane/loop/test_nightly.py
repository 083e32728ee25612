from dataclasses import dataclass
from datetime import date

from controlplane.loop.nightly import choose_for_gating, default_window, next_step, predicted_record


@dataclass
class I:
    point: float
    low: float
    high: float


@dataclass
class D:
    cost_per_green_pr: I
    fpy: I
    green_prs: I


@dataclass
class E:
    cost_per_green_pr: I
    fpy: I
    support: float = 1.0
    level: float = 0.9


@dataclass
class P:
    content_hash: str


@dataclass
class C:
    policy: P
    deltas: D
    feasible: bool = True
    risk: str = "low"
    lever: str = "routing"
    estimate: E = None


def cand(h, point, high, **kw):
    d = D(I(point, point - 0.05, high), I(0, -0.01, 0.01), I(0, -0.01, 0.01))
    return C(P(h * 64), d, estimate=E(I(0.01, 0.009, 0.011), I(0.8, 0.78, 0.82)), **kw)


def test_choose_for_gating_rules():
    cs = [cand("a", -0.2, -0.1), cand("b", -0.3, 0.05), cand("c", -0.2, -0.1, feasible=False),
          cand("d", -0.01, -0.001), cand("e", -0.2, -0.1, risk="high"), cand("f", -0.15, -0.1),
          cand("g", -0.15, -0.1), cand("a", -0.2, -0.1)]
    choice = choose_for_gating(cs, proposed_hashes=["f" * 64], max_gated=2)
    assert [c.policy.content_hash[0] for c in choice.chosen] == ["a", "g"]
    reasons = dict(choice.skipped)
    assert "not confidently cheaper" in reasons["b" * 12]
    assert "non-inferior" in reasons["c" * 12]
    assert "not a saving" in reasons["d" * 12]
    assert "risk high" in reasons["e" * 12]
    assert reasons["f" * 12] == "already proposed"
    assert reasons["a" * 12] == "already proposed"  # the duplicate within one search


def test_gating_budget():
    cs = [cand(x, -0.2, -0.1) for x in "abc"]
    choice = choose_for_gating(cs, proposed_hashes=[], max_gated=1)
    assert len(choice.chosen) == 1 and "budget" in dict(choice.skipped)["b" * 12]


def test_predicted_record_has_what_approvals_and_verify_read():
    rec = predicted_record(cand("a", -0.2, -0.1))
    assert rec.cost_per_green_pr_rel_delta == -0.2 and rec.risk == "low"
    assert rec.cost_per_green_pr_rel_delta_ci == (-0.25, -0.1)
    assert rec.record()["cost_per_green_pr_rel_delta_ci"] == [-0.25, -0.1]


def test_default_window_is_yesterday():
    assert default_window(date(2026, 11, 25)) == ("2026-11-24", "2026-11-24")


def test_next_step():
    assert next_step(state="proposed", gate_verdict=None, auto_approves=False).action == "gate"
    for verdict in ("FAILED", "ERROR"):
        step = next_step(state="gated", gate_verdict=verdict, auto_approves=True)
        assert step.action == "reject" and verdict in step.reason
    # INCONCLUSIVE goes to a platform owner; no rule may approve it (auto_decision refuses).
    step = next_step(state="gated", gate_verdict="INCONCLUSIVE", auto_approves=True)
    assert step.action == "await_approval" and "owner" in step.reason
    assert next_step(state="awaiting_approval", gate_verdict="PASSED",
                     auto_approves=True).action == "auto_approve"
    assert next_step(state="awaiting_approval", gate_verdict="PASSED", auto_approves=True,
                     dry_run=True).action == "stop"
    assert next_step(state="approved", gate_verdict="PASSED", auto_approves=False).action == "promote"


def test_window_already_acted():
    from controlplane.loop.nightly import window_already_acted

    @dataclass
    class Prop:
        window: str
        state: str
        proposal_id: str = "P-1"

    assert window_already_acted([Prop("2026-11-20", "gated")], "2026-11-20") is None
    assert window_already_acted([Prop("2026-11-19", "active")], "2026-11-20") is None
    assert "already promoted" in window_already_acted([Prop("2026-11-20", "rolled_back")],
                                                      "2026-11-20")


@dataclass
class Stored:
    proposal_id: str
    candidate_hash: str
    baseline_hash: str
    baseline_version: int
    window: str
    state: str


def test_not_again_never_retries_a_rejected_or_rolled_back_spec_against_the_same_baseline():
    from controlplane.loop.nightly import not_again

    proposals = [
        Stored("P-1", "bad", "base", 1, "2026-11-01", "rejected"),
        Stored("P-2", "worse", "base", 1, "2026-11-02", "rolled_back"),
        Stored("P-3", "other-baseline", "elsewhere", 2, "2026-11-02", "rejected"),
        Stored("P-4", "tonight", "base", 1, "2026-11-05", "awaiting_approval"),
        Stored("P-5", "old-night", "base", 1, "2026-11-04", "gated"),
    ]
    refused = not_again(proposals, window_label="2026-11-05", active_version=1,
                        active_hash="base")
    assert refused["bad"].startswith("rejected against this baseline (P-1)")
    assert refused["worse"].startswith("rolled_back against this baseline (P-2)")
    assert refused["tonight"] == "already proposed"
    # Another baseline's rejection, and an unfinished proposal of another night, do not bar.
    assert "other-baseline" not in refused and "old-night" not in refused


def test_choose_for_gating_says_why_a_refused_spec_is_skipped():
    c = cand("a", -0.2, -0.1)
    choice = choose_for_gating([c], proposed_hashes={"a" * 64: "rejected against this "
                                                     "baseline (P-1)"})
    assert not choice.chosen
    assert choice.skipped == [("a" * 12, "rejected against this baseline (P-1)")]


def test_window_days():
    from controlplane.loop.nightly import window_days

    assert window_days("2026-11-05", "2026-11-05") == 1
    assert window_days("2026-11-01", "2026-11-07") == 7


def test_choose_exploration():
    from controlplane.loop.nightly import choose_exploration

    @dataclass
    class Pol:
        content_hash: str

    @dataclass
    class Cand:
        policy: Pol

    @dataclass
    class Plan:
        candidate: Cand | None
        reason: str

    assert choose_exploration(None, {}) == (None, "exploration is off")
    assert choose_exploration(Plan(None, "nothing blocked"), {}) == (None, "nothing blocked")
    pick = Cand(Pol("ee" * 32))
    assert choose_exploration(Plan(pick, "shadow 50% on S"), {})[0] is pick
    chosen, why = choose_exploration(Plan(pick, "x"), {"ee" * 32: "rejected (P-9)"})
    assert chosen is None and "rejected (P-9)" in why


def test_canary_first_and_rollout_blocks():
    from controlplane.loop.nightly import canary_first, rollout_blocks

    assert canary_first("routing", [0.25, 1.0], ["exploration"]) == 0.25
    assert canary_first("exploration", [0.25, 1.0], ["exploration"]) is None
    assert canary_first("routing", [1.0], []) is None
    assert rollout_blocks(None) is None

    @dataclass
    class R:
        proposal_id: str = "P-1"
        candidate_version: int = 3
        share: float = 0.25

    assert "P-1" in rollout_blocks(R()) and "25%" in rollout_blocks(R())
    assert next_step(state="canary", gate_verdict="PASSED", auto_approves=False).action == \
        "report"


def test_an_unattended_run_leaves_a_verdict_short_of_passed_to_an_owner():
    step = next_step(state="awaiting_approval", gate_verdict="INCONCLUSIVE", auto_approves=False,
                     non_interactive=True)
    assert step.action == "stop" and "platform owner" in step.reason
    passed = next_step(state="awaiting_approval", gate_verdict="PASSED", auto_approves=False,
                       non_interactive=True)
    assert passed.action == "await_approval"
    # Interactively, the owner is asked (the pause-for-input path).
    assert next_step(state="awaiting_approval", gate_verdict="INCONCLUSIVE",
                     auto_approves=False).action == "await_approval"


def test_a_runaway_family_brings_the_guardrails_lever_into_the_search():
    from controlplane.loop.nightly import levers_for_signals

    runaway = {"by_scope": {"family": 2, "team": 1}}
    levers, why = levers_for_signals(["routing"], runaway)
    assert levers == ["routing", "guardrails"] and "2 family spend anomalies" in why
    assert levers_for_signals("routing", {"by_scope": {"family": 1}})[0] == ["routing",
                                                                            "guardrails"]
    for covered in ("all", ["routing", "guardrails"], ["all"]):
        assert levers_for_signals(covered, runaway) == (covered, None)
    assert levers_for_signals(["routing"], {"by_scope": {"team": 3}}) == (["routing"], None)
    assert levers_for_signals(["routing"], {"error": "x"}) == (["routing"], None)
    assert levers_for_signals(["routing"], None) == (["routing"], None)
