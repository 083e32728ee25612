"""An owner approves a paused nightly for real (issue 15, defect 1): a Prefect server (the
test harness: a server subprocess over HTTP with its own database), a flow that runs the
nightly's own ``decide`` and ``promote`` tasks on a proposal in a temporary store, paused by
``wait_for_owner``; resumed through the REST call the Prefect UI's form makes, or by
``autopilot proposals approve`` on the command line. Either way the decision is recorded
with the owner's identity and the candidate is promoted."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
from click.testing import CliRunner
from prefect import flow

from contracts.prediction import Prediction
from controlplane.bootstrap import initialise_state
from controlplane.flows import decide, promote, record_proposal, to_awaiting
from controlplane.loop.context import LoopContext
from controlplane.loop.waiting import WAITING_ACTION, pause_key
from controlplane.settings import StateDir
from store import ProposalState, Store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_server():
    """A Prefect server for this module; its URL is in Prefect's settings meanwhile."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def proposal(tmp_path, monkeypatch):
    """A gated high-risk proposal awaiting a person (no auto-approval rule, no approver)."""
    state = StateDir(tmp_path / "state")
    initialise_state(state)
    state.save_settings(state.settings().model_copy(update={
        "platform_owners": ["owner"], "approval_timeout_s": 300}))
    monkeypatch.setenv("PREFECT_HOME", str(state.prefect_home))  # restored after the test
    with LoopContext.open(state.root) as ctx:
        active = ctx.store.active_policy().policy
        spec = active.spec.model_dump(mode="json")
        spec["routing"]["max_attempts"] = active.spec.routing.max_attempts + 1
        candidate = active.evolve(author="autopilot-search", description="test", **spec)
        pid = record_proposal.fn(ctx, _Candidate(candidate), "2026-11-20",
                                 Prediction(lever="routing", risk="high",
                                            cost_per_green_pr_rel_delta=-0.1))
        ctx.store.record_gate(pid, "PASSED", actor="test", reason="test",
                              evidence=_passed_bundle(ctx.store.get_proposal(pid)))
    return state, pid


def _passed_bundle(p) -> dict:
    """The least evidence promotion accepts: the gates PASSED this candidate against this
    baseline on the pinned suite (the gates themselves are tested elsewhere)."""
    from gates.evidence import SCHEMA
    from gates.suite import REFERENCE_SUITE_SHA256

    return {"schema": SCHEMA, "overall": "PASSED", "dry_run": False,
            "candidate": {"content_hash": p.candidate_hash},
            "baseline": {"content_hash": p.baseline_hash},
            "suite": {"content_hash": REFERENCE_SUITE_SHA256}}


class _Candidate:
    def __init__(self, policy, lever="routing"):
        self.policy, self.lever = policy, lever


@flow(name="approval-pause-test")
def decide_and_promote(state_dir: str, proposal_id: str) -> dict:
    """The nightly's last steps for one proposal, with its own tasks."""
    with LoopContext.open(state_dir) as ctx:
        to_awaiting(ctx, proposal_id)
        decision = decide(ctx, proposal_id, None)
        version = promote(ctx, proposal_id) if decision.approve else None
    return {"decision": decision.model_dump(), "version": version}


def _in_background(fn):
    """Run ``fn`` in a thread that sees this thread's Prefect settings (the harness's URL
    lives in a context variable); returns the thread and a box for its result or error."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                              daemon=True)
    thread.start()
    return thread, box


def _paused_run(state: StateDir, proposal_id: str, timeout_s: float = 120):
    """The flow run waiting on ``proposal_id``, once Prefect shows it paused."""
    from uuid import UUID

    from prefect import get_client

    deadline = time.monotonic() + timeout_s
    run_id = None
    with Store.open(state.store_url()) as store, get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            waiting = store.audit_entries(subject=proposal_id, action=WAITING_ACTION)
            if waiting:
                run_id = UUID(waiting[-1].payload["flow_run_id"])
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_paused():
                    return run
            time.sleep(0.25)
    raise AssertionError(f"no paused run for {proposal_id} within {timeout_s} s ({run_id})")


def _finish(thread, box, timeout_s: float = 120) -> dict:
    thread.join(timeout_s)
    assert not thread.is_alive(), "the flow did not finish after it was resumed"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_an_owner_resumes_the_paused_run_from_the_ui_form(prefect_server, proposal):
    import httpx
    from prefect import get_client

    state, pid = proposal
    thread, box = _in_background(lambda: decide_and_promote(str(state.root), pid))
    run = _paused_run(state, pid)

    # What the UI reads to draw the form: the schema under the pause's lower-case key.
    keyset = run.state.state_details.run_input_keyset
    assert keyset["schema"] == f"paused-{pause_key(pid)}-schema"
    with get_client(sync_client=True) as client:
        schema = client.read_flow_run_input(run.id, keyset["schema"])
    assert {"approve", "approver", "reason"} <= set(_properties(schema))

    # What the UI posts when the owner submits the form.
    reply = httpx.post(f"{prefect_server}/flow_runs/{run.id}/resume", timeout=60,
                       json={"run_input": {"approve": True, "approver": " Owner ",
                                           "reason": "looks right"}})
    assert reply.status_code in (200, 201), reply.text
    assert reply.json()["status"] == "ACCEPT", reply.json()

    result = _finish(thread, box)
    assert result["decision"]["approve"] and result["decision"]["via"] == "prefect-ui"
    assert result["decision"]["by"] == "owner"
    with Store.open(state.store_url()) as store:
        approval = store.get_approval(pid)
        assert (approval.approver, approval.decision.value) == ("owner", "approve")
        assert approval.reason == "looks right"
        assert store.get_proposal(pid).state is ProposalState.ACTIVE
        assert store.active_policy().version == result["version"] != 1


def test_a_cli_approval_resumes_the_paused_run(prefect_server, proposal):
    import json

    from controlplane.cli import cli

    state, pid = proposal
    thread, box = _in_background(lambda: decide_and_promote(str(state.root), pid))
    _paused_run(state, pid)

    out = CliRunner().invoke(cli, ["--state-dir", str(state.root), "--json", "proposals",
                                   "approve", pid, "--as", "OWNER", "--reason", "ship it"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["nightly_flow"].startswith("resumed nightly run"), out.output

    result = _finish(thread, box)
    assert result["decision"]["approve"] and result["decision"]["via"] == "cli"
    assert result["decision"]["by"] == "owner"
    with Store.open(state.store_url()) as store:
        assert store.get_approval(pid).approver == "owner"
        assert store.get_proposal(pid).state is ProposalState.ACTIVE
        assert store.active_policy().version == result["version"] != 1


def _properties(schema) -> dict:
    import json

    value = json.loads(schema) if isinstance(schema, str) else schema
    return value.get("properties", {})
