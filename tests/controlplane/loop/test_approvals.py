import pytest

from controlplane.loop.approvals import AutoApprovalRule, NotAuthorised, authorise, auto_decision


def test_owner_other_than_author_may_decide():
    authorise("alice", author="autopilot-nightly", owners=["alice", "bob"])


@pytest.mark.parametrize(("who", "author", "owners", "match"), [
    ("mallory", "autopilot-nightly", ["alice"], "not a platform owner"),
    ("alice", "alice", ["alice"], "four eyes"),
    ("", "x", ["alice"], "identity is required"),
    ("alice", "x", [], "none configured"),
])
def test_refusals_say_why(who, author, owners, match):
    with pytest.raises(NotAuthorised, match=match):
        authorise(who, author=author, owners=owners)


PREDICTED = {"risk": "low", "cost_per_green_pr_rel_delta": -0.2, "fpy_delta": 0.0}


def test_auto_approval_off_by_default():
    d = auto_decision(lever="routing", gate_verdict="PASSED", predicted=PREDICTED, rules=[])
    assert not d.approve and "no auto-approval rule" in d.reason


@pytest.mark.parametrize("verdict", ["FAILED", "ERROR", "INCONCLUSIVE", None])
def test_never_auto_approves_without_passed_gates(verdict):
    rules = [AutoApprovalRule(lever="*", max_risk="high")]
    d = auto_decision(lever="routing", gate_verdict=verdict, predicted=PREDICTED, rules=rules)
    assert not d.approve


def test_rule_bounds():
    rules = [AutoApprovalRule(lever="cache", max_risk="low", min_predicted_saving=0.05)]
    ok = auto_decision(lever="cache", gate_verdict="PASSED", predicted=PREDICTED, rules=rules)
    assert ok.approve and ok.rule == "auto_approve[cache]"
    other_lever = auto_decision(lever="routing", gate_verdict="PASSED", predicted=PREDICTED,
                                rules=rules)
    assert not other_lever.approve
    risky = auto_decision(lever="cache", gate_verdict="PASSED",
                          predicted={**PREDICTED, "risk": "medium"}, rules=rules)
    assert not risky.approve and "risk medium > max low" in risky.reason
    small = auto_decision(lever="cache", gate_verdict="PASSED",
                          predicted={**PREDICTED, "cost_per_green_pr_rel_delta": -0.01},
                          rules=rules)
    assert not small.approve and "1.0% < min 5.0%" in small.reason
    fpy = auto_decision(lever="cache", gate_verdict="PASSED",
                        predicted={**PREDICTED, "fpy_delta": -0.02}, rules=rules)
    assert not fpy.approve and "FPY drop" in fpy.reason
