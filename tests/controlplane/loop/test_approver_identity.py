"""Approver identities are normalised once, before the check and for the record (issue 14,
defect 11): a spelling of the author's name cannot pass the four-eyes check, and what is
recorded is the identity that was checked, not the raw input."""

from types import SimpleNamespace

import pytest

from contracts.prediction import Prediction
from controlplane.loop.approvals import (
    NotAuthorised,
    authorise,
    decide_proposal,
    normalise_identity,
)


class RecordingStore:
    def __init__(self):
        self.recorded: list[tuple[str, str, str]] = []

    def get_approval(self, proposal_id):
        return None

    def record_decision(self, proposal_id, *, approver, decision, reason):
        self.recorded.append((proposal_id, approver, decision))


def _proposal(author: str):
    return SimpleNamespace(proposal_id="P-1", lever="cache", created_by=author,
                           gate_verdict=SimpleNamespace(value="FAILED"),
                           predicted=Prediction(risk="high"))


def _never_asked(_p):
    raise AssertionError("a platform owner was asked although an approver was named")


@pytest.mark.parametrize("raw", ["alice", " alice", "alice\t", "Alice", "ALICE", " AlIcE ",
                                 "\uff41\uff4c\uff49\uff43\uff45"])  # the last: full width
def test_every_spelling_is_one_identity(raw):
    assert normalise_identity(raw) == "alice"


@pytest.mark.parametrize("approver", ["Alice", "ALICE", " alice ",
                                      "\uff41\uff4c\uff49\uff43\uff45"])
def test_the_author_cannot_approve_under_another_spelling(approver):
    # Before the fix: the owners list spelled "Alice", the author "alice": "Alice" passed.
    with pytest.raises(NotAuthorised, match="four eyes"):
        authorise(approver, author="alice", owners=["Alice", "bob"])
    with pytest.raises(NotAuthorised, match="four eyes"):
        authorise(approver, author=" ALICE", owners=["alice", "bob"])


def test_an_owner_listed_in_another_case_is_recognised_and_returned_normalised():
    assert authorise("Bob", author="alice", owners=["BOB"]) == "bob"
    with pytest.raises(NotAuthorised, match="not a platform owner"):
        authorise("bobby", author="alice", owners=["bob"])
    with pytest.raises(NotAuthorised, match="identity is required"):
        authorise("  \t ", author="alice", owners=["bob"])


def test_the_recorded_approver_is_the_checked_identity():
    store = RecordingStore()
    got = decide_proposal(store, _proposal(author="alice"), approver="  Bob ",
                          settings=SimpleNamespace(auto_approve=[], platform_owners=["bob"]),
                          ask_owner=_never_asked)
    assert got.by == "bob" and store.recorded == [("P-1", "bob", "approve")]
    assert "Bob " not in got.reason


def test_the_author_spelled_differently_is_refused_by_the_decision_step_too():
    store = RecordingStore()
    with pytest.raises(NotAuthorised, match="four eyes"):
        decide_proposal(store, _proposal(author="alice"), approver="ALICE",
                        settings=SimpleNamespace(auto_approve=[],
                                                 platform_owners=["Alice", "bob"]),
                        ask_owner=_never_asked)
    assert store.recorded == []
