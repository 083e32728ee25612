from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from controlplane.deploy import (
    VERIFY_GUARD,
    WorkPoolRefused,
    deployment_specs,
    pool_action,
    quarter_that_ended,
    verify_start_after_nightly,
    worker_command,
)
from controlplane.settings import Settings


def test_nightly_follows_the_configured_cron_and_verify_has_no_clock_of_its_own():
    specs = {s.flow: s for s in deployment_specs(Settings(nightly_cron="30 3 * * *",
                                                          timezone="Europe/Paris"), "/tmp/s")}
    assert specs["nightly"].cron == "30 3 * * *"
    # Any cron for verify could meet a nightly ("0 */6 * * *" shifted an hour still meets a
    # long night): it runs after each nightly instead.
    assert specs["verify"].cron is None
    assert specs["quarterly_report"].cron == "0 6 1 1,4,7,10 *"
    assert specs["nightly"].timezone == "Europe/Paris"
    assert specs["nightly"].parameters == {"state_dir": "/tmp/s"}
    assert set(specs) == {"nightly", "verify", "quarterly_report"}


def test_every_spec_names_a_prefect_flow_that_takes_its_parameters():
    from prefect import Flow

    from controlplane import flows

    for spec in deployment_specs(Settings(), "/tmp/s"):
        flow = getattr(flows, spec.flow)
        assert isinstance(flow, Flow), spec.flow
        accepted = set(flow.parameters.properties)
        assert set(spec.parameters) <= accepted, (spec.flow, spec.parameters, accepted)
        assert flow.name.startswith("autopilot-"), flow.name


def test_the_nightly_asks_for_its_verify_whatever_way_it_ends():
    from controlplane import flows
    from controlplane.deploy import verify_after_nightly

    for hooks in (flows.nightly.on_completion_hooks, flows.nightly.on_failure_hooks,
                  flows.nightly.on_crashed_hooks):
        assert verify_after_nightly in hooks


@pytest.mark.parametrize("now, ended", [
    (datetime(2027, 1, 1, 6, 0, tzinfo=UTC), "2026Q4"),       # Jan 1: last year's Q4
    (date(2026, 12, 31), "2026Q3"),
    (datetime(2026, 4, 1, 6, 0, tzinfo=UTC), "2026Q1"),
    (datetime(2026, 3, 31, 23, 59, tzinfo=UTC), "2025Q4"),
    (datetime(2026, 7, 1, 0, 0, tzinfo=UTC), "2026Q2"),
    (datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC), "2026Q1"),
    (datetime(2026, 10, 1, 6, 0, tzinfo=UTC), "2026Q3"),
])
def test_quarter_that_ended_at_the_boundaries(now, ended):
    assert quarter_that_ended(now) == ended


def test_quarter_is_read_in_the_schedules_time_zone():
    # 06:00 on 1 January in Auckland is still 31 December in UTC.
    run = datetime(2027, 1, 1, 6, 0, tzinfo=ZoneInfo("Pacific/Auckland"))
    assert run.astimezone(UTC).date() == date(2026, 12, 31)
    assert quarter_that_ended(run) == "2026Q4"


def test_the_quarterly_flow_reports_the_quarter_that_ended_unless_told(monkeypatch):
    from controlplane import flows

    asked = []
    monkeypatch.setattr(flows, "write_quarterly", lambda ctx, quarter: asked.append(quarter))

    class Ctx:
        settings = Settings(timezone="UTC")

        @staticmethod
        def clock():
            return datetime(2027, 1, 1, 6, 0, tzinfo=UTC)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(flows.LoopContext, "open", classmethod(lambda cls, state_dir: Ctx()))
    flows.quarterly_report.fn("/tmp/s")
    flows.quarterly_report.fn("/tmp/s", quarter="2026Q2")
    assert asked == ["2026Q4", "2026Q2"]


ENDED = datetime(2026, 12, 4, 3, 10, tzinfo=UTC)


def test_a_deployed_night_asks_for_verify_as_soon_as_it_ends():
    next_night = ENDED + timedelta(hours=22, minutes=50)
    for state in ("COMPLETED", "FAILED", "CRASHED"):
        assert verify_start_after_nightly(ENDED, from_deployment=True, final_state=state,
                                          next_nightly_at=next_night) == ENDED
    assert verify_start_after_nightly(ENDED, from_deployment=True, final_state="COMPLETED",
                                      next_nightly_at=None) == ENDED


def test_no_verify_for_a_manual_or_cancelled_night():
    assert verify_start_after_nightly(ENDED, from_deployment=False, final_state="COMPLETED",
                                      next_nightly_at=None) is None
    assert verify_start_after_nightly(ENDED, from_deployment=True, final_state="CANCELLED",
                                      next_nightly_at=None) is None


def test_a_night_that_ends_just_before_the_next_leaves_verify_to_that_one():
    # A night paused for an owner ends at 01:30; the next nightly is due at 02:00.
    assert verify_start_after_nightly(ENDED, from_deployment=True, final_state="COMPLETED",
                                      next_nightly_at=ENDED + VERIFY_GUARD / 2) is None
    assert verify_start_after_nightly(ENDED, from_deployment=True, final_state="COMPLETED",
                                      next_nightly_at=ENDED + VERIFY_GUARD) == ENDED


def test_the_product_creates_a_missing_pool_uses_a_process_pool_and_refuses_others():
    assert pool_action(None) == "create"
    assert pool_action("process") == "use"
    with pytest.raises(WorkPoolRefused, match="kubernetes"):
        pool_action("kubernetes")


def test_the_worker_runs_in_this_venv_and_never_creates_a_pool():
    command = worker_command("loop", python="/venv/bin/python")
    assert command[:3] == ["/venv/bin/python", "-m", "prefect"]
    assert command[3:] == ["worker", "start", "--pool", "loop", "--type", "process",
                           "--no-create-pool-if-not-found"]


def test_the_worker_command_needs_importlib_metadata():
    # prefect.workers imports it without declaring it (the shipped environment lacked it).
    import prefect.workers.process  # noqa: F401


@pytest.fixture()
def state(tmp_path, monkeypatch):
    from controlplane.bootstrap import initialise_state
    from controlplane.settings import StateDir

    state = StateDir(tmp_path / "state")
    initialise_state(state)
    monkeypatch.setenv("PREFECT_HOME", str(state.prefect_home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return state


def test_schedule_dry_run_on_a_work_pool_lists_the_deployments(state):
    import json

    from click.testing import CliRunner

    from controlplane.cli import cli

    result = CliRunner().invoke(cli, ["--state-dir", str(state.root), "--json", "schedule",
                                      "--work-pool", "loop", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["work_pool"] == "loop"
    assert {r["deployment"]: r["cron"] for r in out["deployments"]} == {
        "autopilot-nightly": "0 2 * * *", "autopilot-verify": "after each nightly run",
        "autopilot-quarterly-report": "0 6 1 1,4,7,10 *"}


def test_a_work_pool_without_a_prefect_server_is_refused_with_what_to_do(state):
    from click.testing import CliRunner

    from controlplane.cli import cli
    from controlplane.deploy import PrefectServerRequired

    for args in (["schedule", "--work-pool", "loop"], ["worker", "--work-pool", "loop"]):
        result = CliRunner().invoke(cli, ["--state-dir", str(state.root), *args])
        assert isinstance(result.exception, PrefectServerRequired), (args, result.output)
        assert "prefect server start" in str(result.exception)
