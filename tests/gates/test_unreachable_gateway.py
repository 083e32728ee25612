"""A gate against a gateway that is not there ends ERROR within a minute (issue 14, defect
11). Before the fix each of the ~650 calls of the reference suite waited out its own
retries (about five minutes on a closed port; hours on an address that drops packets), so
the end-to-end check runs the real command in a subprocess with a timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gates_testkit import make_policy, tiny_suite, write_fleet

from contracts.errors import TransientError
from gates.port import GatewayDown, GatewayServingPath

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_autopilot_gate_against_a_closed_port_ends_error_within_a_minute(tmp_path):
    fleet = write_fleet(tmp_path / "fleet")
    policy = tmp_path / "active.yaml"
    policy.write_text(make_policy(1).to_yaml())
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(make_policy(2, routing={"router": "fixed", "escalation": ["M", "L"],
                                                 "max_attempts": 2}).to_yaml())
    state = tmp_path / "state"
    url = f"http://127.0.0.1:{closed_port()}"
    code = textwrap.dedent(f"""
        import sys
        from controlplane.cli import main
        state = {str(state)!r}
        try:
            main(["--state-dir", state, "init", "--fleet", {str(fleet)!r},
                  "--policy", {str(policy)!r}])
        except SystemExit as exc:
            assert not exc.code, exc.code
        main(["--state-dir", state, "--json", "gate", "--candidate", {str(candidate)!r},
              "--fleet", {str(fleet)!r}, "--url", {url!r}])
    """)
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("`autopilot gate` against a closed port ran past 60 s")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    out = proc.stdout[proc.stdout.index("{"):]
    verdict = json.loads(out)
    assert verdict["overall"] == "ERROR", verdict
    assert elapsed < 60


class DeadClient:
    """A client whose every call fails as an unreachable gateway does."""

    def __init__(self):
        self.calls = 0

    def complete(self, *args, **kwargs):
        self.calls += 1
        raise TransientError("connection refused")

    def policy(self):
        self.calls += 1
        raise TransientError("connection refused")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_after_one_call_fails_every_retry_later_calls_fail_at_once():
    client, clock = DeadClient(), Clock()
    path = GatewayServingPath("http://gw", client=client, retries=3, sleep=clock.sleep,
                              clock=clock, down_for_s=60)
    case = tiny_suite(1).cases[0]
    with pytest.raises(TransientError, match="connection refused"):
        path.complete(case, policy_version=1)
    assert client.calls == 3
    for _ in range(500):
        with pytest.raises(GatewayDown, match="first failure: connection refused"):
            path.complete(case, policy_version=1)
    assert client.calls == 3 and clock.now < 2  # no call made, no time spent
    clock.now += 61  # after down_for_s the gateway is tried again
    with pytest.raises(TransientError):
        path.active_policy()
    assert client.calls == 6


def test_retries_stop_at_the_time_budget():
    class SlowDead(DeadClient):
        def complete(self, *args, **kwargs):
            clock.now += 15  # a connect timeout
            return super().complete()

    clock = Clock()
    client = SlowDead()
    path = GatewayServingPath("http://gw", client=client, retries=10, sleep=clock.sleep,
                              clock=clock, retry_budget_s=20)
    with pytest.raises(TransientError):
        path.complete(tiny_suite(1).cases[0], policy_version=1)
    assert client.calls == 2 and clock.now <= 31


def test_a_success_clears_the_down_state():
    clock = Clock()

    class Flaky(DeadClient):
        fail = True

        def policy(self):
            self.calls += 1
            if self.fail:
                raise TransientError("refused")
            return {"version": 1}

    client = Flaky()
    path = GatewayServingPath("http://gw", client=client, retries=2, sleep=clock.sleep,
                              clock=clock, down_for_s=5)
    with pytest.raises(TransientError):
        path.active_policy()
    client.fail = False
    with pytest.raises(GatewayDown):
        path.active_policy()
    clock.now += 6
    assert path.active_policy() == {"version": 1}
    clock.now -= 100  # the down window is gone, not just expired
    assert path.active_policy() == {"version": 1}
