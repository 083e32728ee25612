import pytest

from contracts.prediction import Prediction
from controlplane.loop.approvals import AutoApprovalRule, NotAuthorised, authorise, auto_decision


def test_owner_other_than_author_may_decide():
    assert authorise("alice", author="autopilot-nightly", owners=["alice", "bob"]) == "alice"
    assert authorise(" bob ", author="alice", owners=["alice", "bob"]) == "bob"
    with pytest.raises(NotAuthorised):  # the same owner, as author, is refused
        authorise("bob", author="bob", owners=["alice", "bob"])


@pytest.mark.parametrize(("who", "author", "owners", "match"), [
    ("mallory", "autopilot-nightly", ["alice"], "not a platform owner"),
    ("alice", "alice", ["alice"], "four eyes"),
    ("", "x", ["alice"], "identity is required"),
    ("alice", "x", [], "none configured"),
])
def test_refusals_say_why(who, author, owners, match):
    with pytest.raises(NotAuthorised, match=match):
        authorise(who, author=author, owners=owners)


PREDICTED = Prediction(risk="low", cost_per_green_pr_rel_delta=-0.2, fpy_delta=0.0)


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
                          predicted=PREDICTED.model_copy(update={"risk": "medium"}), rules=rules)
    assert not risky.approve and "risk medium > max low" in risky.reason
    small = auto_decision(lever="cache", gate_verdict="PASSED",
                          predicted=PREDICTED.model_copy(update={"cost_per_green_pr_rel_delta": -0.01}),
                          rules=rules)
    assert not small.approve and "1.0% < min 5.0%" in small.reason
    fpy = auto_decision(lever="cache", gate_verdict="PASSED",
                        predicted=PREDICTED.model_copy(update={"fpy_delta": -0.02}), rules=rules)
    assert not fpy.approve and "FPY drop" in fpy.reason


# -- the decision step: given observed state, expect these recorded actions ------------------
class RecordingStore:
    """The store as the decision step sees it: an approval on record or none; records
    every decision it is asked to keep."""

    def __init__(self, earlier=None):
        self.earlier = earlier
        self.recorded: list[tuple[str, str, str]] = []

    def get_approval(self, proposal_id):
        return self.earlier

    def record_decision(self, proposal_id, *, approver, decision, reason):
        self.recorded.append((proposal_id, approver, decision))


def _proposal(verdict="PASSED", lever="cache", author="autopilot-nightly"):
    from types import SimpleNamespace

    return SimpleNamespace(proposal_id="P-1", lever=lever, created_by=author,
                           gate_verdict=SimpleNamespace(value=verdict) if verdict else None,
                           predicted=PREDICTED)


def _settings(rules=(), owners=("alice",)):
    from types import SimpleNamespace

    return SimpleNamespace(auto_approve=list(rules), platform_owners=list(owners))


def _never_asked(_p):
    raise AssertionError("a platform owner was asked although the step could decide")


def test_a_decision_on_record_stands_and_nothing_more_is_recorded():
    from types import SimpleNamespace

    from controlplane.loop.approvals import decide_proposal

    earlier = SimpleNamespace(decision=SimpleNamespace(value="reject"), approver="alice",
                              reason="too risky")
    store = RecordingStore(earlier)
    got = decide_proposal(store, _proposal(), approver="bob", settings=_settings(),
                          ask_owner=_never_asked)
    assert (got.approve, got.by, got.via) == (False, "alice", "recorded")
    assert store.recorded == []


def test_an_auto_approval_rule_decides_and_is_recorded_under_its_name():
    from controlplane.loop.approvals import decide_proposal

    store = RecordingStore()
    got = decide_proposal(store, _proposal(), approver=None,
                          settings=_settings([AutoApprovalRule(lever="cache")]),
                          ask_owner=_never_asked)
    assert got.approve and got.via == "auto-approval"
    assert store.recorded == [("P-1", "auto_approve[cache]", "approve")]


def test_a_named_approver_is_authorised_like_anyone_else():
    from controlplane.loop.approvals import decide_proposal

    store = RecordingStore()
    got = decide_proposal(store, _proposal(), approver="alice", settings=_settings(),
                          ask_owner=_never_asked)
    assert got.by == "alice" and got.via == "named approver"
    assert store.recorded == [("P-1", "alice", "approve")]
    with pytest.raises(NotAuthorised):
        decide_proposal(RecordingStore(), _proposal(), approver="mallory",
                        settings=_settings(), ask_owner=_never_asked)


def test_without_rule_or_approver_a_platform_owner_is_asked_and_nothing_recorded_here():
    from controlplane.loop.approvals import Approval, decide_proposal

    store = RecordingStore()
    asked = []

    def ask(p):
        asked.append(p.proposal_id)
        return Approval(approve=False, by="autopilot-timeout", via="timeout", reason="late")

    got = decide_proposal(store, _proposal(verdict="PASSED"), approver=None,
                          settings=_settings(), ask_owner=ask)
    assert asked == ["P-1"] and got.via == "timeout" and store.recorded == []
