"""A crashed nightly's lease (issue 14, defect 1): the next run on the same host breaks a
lease whose holder process is gone, audits it, and takes it; anything else waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from controlplane.loop.lease import parse_holder, pid_alive, stale_holder, stale_reason

HOST = "node-1"


def alive(pids):
    return lambda pid: pid in pids


def test_parse_holder():
    h = parse_holder("node-1:1234:ab12cd34")
    assert (h.host, h.pid, h.nonce) == ("node-1", 1234, "ab12cd34")
    for bad in ("a", "run-a", "node:x:1", "node:-1:1", ":12:ab", "node:0:ab", "n:١٢:ab"):
        assert parse_holder(bad) is None, bad


def test_only_a_dead_process_on_this_host_is_stale():
    assert stale_holder("node-1:1234:ab", HOST, alive(set()))
    assert "1234" in stale_reason("node-1:1234:ab", HOST, alive(set()))
    assert not stale_holder("node-1:1234:ab", HOST, alive({1234}))  # still running
    assert not stale_holder("node-2:1234:ab", HOST, alive(set()))  # another host: cannot tell
    assert not stale_holder("run-a", HOST, alive(set()))  # not ours to judge


def test_pid_alive_probes_this_host():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


@pytest.fixture()
def ctx(tmp_path):
    from controlplane.bootstrap import initialise_state
    from controlplane.loop.context import LoopContext
    from controlplane.settings import StateDir

    state = StateDir(tmp_path / "state")
    initialise_state(state)
    with LoopContext.open(state.root) as ctx:
        yield ctx


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_take_lease_breaks_a_crashed_runs_lease_and_audits_it(ctx):
    from controlplane.flows import NIGHTLY_LEASE, take_lease

    crashed = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    assert ctx.store.acquire_lease(NIGHTLY_LEASE, crashed, 6 * 3600)
    me = f"{socket.gethostname()}:{os.getpid()}:cafe0001"
    assert take_lease.fn(ctx, me, 6 * 3600)
    assert ctx.store.get_lease(NIGHTLY_LEASE).holder == me
    [entry] = ctx.store.audit_entries(action="lease.broken")
    assert entry.payload["holder"] == crashed and entry.payload["by"] == me
    assert "no longer runs" in entry.payload["reason"]


def test_take_lease_waits_for_a_live_or_remote_holder(ctx):
    from controlplane.flows import NIGHTLY_LEASE, take_lease

    me = f"{socket.gethostname()}:{os.getpid()}:cafe0002"
    for holder in (f"{socket.gethostname()}:{os.getpid()}:other", f"elsewhere:{_dead_pid()}:x"):
        assert ctx.store.acquire_lease(NIGHTLY_LEASE, holder, 6 * 3600)
        assert not take_lease.fn(ctx, me, 6 * 3600)
        assert ctx.store.get_lease(NIGHTLY_LEASE).holder == holder
        assert ctx.store.release_lease(NIGHTLY_LEASE, holder)
    assert ctx.store.audit_entries(action="lease.broken") == []
