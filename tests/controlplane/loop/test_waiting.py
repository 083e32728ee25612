"""The pause key and the CLI's resume, without a Prefect server (issue 15, defect 1): the key
Prefect stores the approval form under must be lower-case letters, digits and dashes, and a
CLI decision taken while the run is not yet paused still resumes it."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

import pytest
from prefect.client.schemas.objects import FlowRunInput
from prefect.input.run_input import keyset_from_paused_state
from prefect.states import Paused
from pydantic import ValidationError

from controlplane.loop import waiting
from controlplane.loop.waiting import WAITING_ACTION, pause_key
from controlplane.settings import StateDir
from store.records import proposal_id_for

IDS = [proposal_id_for("a" * 64, "b" * 64, "2026-11-20"), "P-0A1B2C3D4E", "p-0a1b2c3d4e",
       "P_ünïcode id/2", "---", "x" * 300, ""]


def _stored(key: str) -> None:
    """Store every input of a pause under ``key`` the way the Prefect API validates them."""
    keyset = keyset_from_paused_state(Paused(pause_key=key))
    for name in keyset.values():
        FlowRunInput(flow_run_id=uuid.uuid4(), key=name, value="{}")


@pytest.mark.parametrize("proposal_id", IDS)
def test_the_pause_key_is_one_prefect_accepts(proposal_id):
    key = pause_key(proposal_id)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key)
    assert len(key) <= 80
    _stored(key)


def test_a_proposal_id_itself_is_refused_by_prefect():
    """The defect: the upper-case id as the key cannot be stored, so the pause failed."""
    with pytest.raises(ValidationError, match="lowercase letters, numbers, and dashes"):
        _stored(IDS[0])


def test_the_pause_key_is_deterministic_readable_and_distinct():
    assert pause_key("P-0a1b2c3d4e") == pause_key("P-0a1b2c3d4e")
    assert pause_key("P-0a1b2c3d4e").startswith("approval-p-0a1b2c3d4e-")
    keys = [pause_key(i) for i in IDS]
    assert len(set(keys)) == len(keys)  # "P-0A1B..." and "p-0a1b..." too


class _Store:
    def __init__(self, run_id: str | None):
        self.entries = [] if run_id is None else [
            SimpleNamespace(payload={"flow_run_id": run_id})]

    def audit_entries(self, *, subject, action):
        assert action == WAITING_ACTION
        return self.entries


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    return StateDir(tmp_path / "state")


def _fake_prefect(monkeypatch, outcomes, state_name="Running", final=False):
    """``resume_flow_run`` answers from ``outcomes`` (an exception or None), in order."""
    import prefect
    from prefect.exceptions import NotPausedError

    calls = []

    def resume(run_id, run_input=None):
        calls.append((run_id, run_input))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome() if outcome is NotPausedError else outcome

    run_state = SimpleNamespace(name=state_name, is_final=lambda: final)
    monkeypatch.setattr(prefect, "resume_flow_run", resume)
    monkeypatch.setattr(waiting, "_flow_run_state", lambda run_id: run_state)
    return calls


def test_a_cli_decision_resumes_the_run_with_the_form_input(state, monkeypatch):
    from prefect.exceptions import NotPausedError

    run_id = str(uuid.uuid4())
    # Recorded between the run's audit entry and its pause: retried until it is paused.
    calls = _fake_prefect(monkeypatch, [NotPausedError, NotPausedError, None])
    said = waiting.resume_waiting_flow(state, _Store(run_id), "P-1", approver="owner",
                                       approve=True, reason="ok", poll_s=0.01)
    assert said == f"resumed nightly run {run_id}"
    assert len(calls) == 3
    assert calls[-1] == (uuid.UUID(run_id), {"approve": True, "approver": "owner",
                                             "reason": "ok"})


def test_a_finished_run_is_left_alone(state, monkeypatch):
    from prefect.exceptions import NotPausedError

    run_id = str(uuid.uuid4())
    calls = _fake_prefect(monkeypatch, [NotPausedError], state_name="Failed", final=True)
    said = waiting.resume_waiting_flow(state, _Store(run_id), "P-1", approver="owner",
                                       approve=False, reason="no", poll_s=0.01)
    assert len(calls) == 1 and "is Failed, not paused" in said


def test_a_run_that_never_pauses_is_given_up_after_the_settle_time(state, monkeypatch):
    from prefect.exceptions import NotPausedError

    _fake_prefect(monkeypatch, [NotPausedError] * 1000)
    said = waiting.resume_waiting_flow(state, _Store(str(uuid.uuid4())), "P-1",
                                       approver="owner", approve=True, reason="ok",
                                       settle_s=0.05, poll_s=0.01)
    assert "is Running, not paused" in said


def test_nothing_to_resume_without_a_waiting_run(state):
    said = waiting.resume_waiting_flow(state, _Store(None), "P-1", approver="owner",
                                       approve=True, reason="ok")
    assert said == "no nightly run is waiting on this proposal"
