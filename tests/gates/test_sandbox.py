"""The program-check sandbox (gates/sandbox.py).

The protocol and limit tests run in both modes: under bubblewrap where this machine can run
it, and with the resource limits only (the operator's opt-in). The escape tests (issue 14,
defect 10: write outside, read the state directory, open a socket, fork) need bubblewrap
and skip, saying so, where it cannot run; the refusal without a sandbox and without the
opt-in is tested everywhere.
"""

import os
import socket
import threading
import time
import uuid

import pytest

from gates import sandbox
from gates.sandbox import ENV_UNSANDBOXED, SandboxLimits, run_check, sandbox_status

# Wall clock well above a loaded 2-core machine's interpreter start in bubblewrap (a check
# that should pass must not time out); the CPU limit still stops spinning checks in 1 s.
FAST = SandboxLimits(timeout_s=6.0, cpu_s=1, memory_mb=256)
HAVE_BWRAP = sandbox_status().mode == "bwrap"
needs_bwrap = pytest.mark.skipif(
    not HAVE_BWRAP, reason=f"no working bubblewrap here: {sandbox_status().detail}")


def without_bwrap(monkeypatch, opt_in: bool) -> None:
    monkeypatch.setattr(sandbox, "_probe_bwrap", lambda: "bwrap is not installed (test)")
    if opt_in:
        monkeypatch.setenv(ENV_UNSANDBOXED, "1")
    else:
        monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)


@pytest.fixture(params=["bwrap", "limits"])
def mode(request, monkeypatch):
    if request.param == "bwrap":
        if not HAVE_BWRAP:
            pytest.skip(f"no working bubblewrap here: {sandbox_status().detail}")
        monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    else:
        without_bwrap(monkeypatch, opt_in=True)
    assert sandbox_status().mode == request.param
    return request.param


# ------------------------------------------------------------ protocol and limits (both)
def test_pass_and_fail_protocol(mode):
    src = "import json,sys\nd=json.load(sys.stdin)\nprint('PASS' if d['x']==1 else 'FAIL x is '+str(d['x']))"
    assert run_check(src, {"x": 1}, FAST).status == "pass"
    r = run_check(src, {"x": 2}, FAST)
    assert (r.status, r.reason) == ("fail", "x is 2")


def test_sleeping_check_is_killed_at_the_wall_clock_timeout(mode):
    start = time.monotonic()
    r = run_check("import time\ntime.sleep(60)\nprint('PASS')", {}, FAST)
    assert time.monotonic() - start < 12
    assert r.status == "error" and "wall-clock timeout of 6 s" in r.reason


def test_busy_loop_is_killed_by_the_cpu_limit(mode):
    r = run_check("while True:\n    pass", {}, SandboxLimits(timeout_s=20, cpu_s=1))
    assert r.status == "error" and "CPU-time limit" in r.reason, r.reason


def test_memory_hog_is_stopped(mode):
    r = run_check("x = bytearray(2 * 1024**3)\nprint('PASS')", {}, FAST)
    assert r.status == "error" and "MemoryError" in r.reason


def test_output_flood_is_capped(mode):
    r = run_check("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {}, FAST)
    assert r.status == "error"


def test_no_secrets_no_inherited_cwd(mode, monkeypatch):
    monkeypatch.setenv("AUTOPILOT_SECRET_TOKEN", "hunter2")
    expect_cwd = ("os.getcwd() == '/sandbox'" if mode == "bwrap" else
                  "os.path.basename(os.getcwd()).startswith('gate-check-')")
    src = ("import os\n"
           "ok = ('AUTOPILOT_SECRET_TOKEN' not in os.environ and "
           f"os.getcwd() != {os.getcwd()!r} and {expect_cwd})\n"
           "print('PASS' if ok else 'FAIL ' + repr(sorted(os.environ)) + os.getcwd())")
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason


def test_the_store_url_from_the_environment_never_reaches_a_check(mode, monkeypatch):
    """Issue 15, defect 8: $AUTOPILOT_STORE_URL (the store's password) is ours."""
    monkeypatch.setenv("AUTOPILOT_STORE_URL", "postgresql://ap:s3cret@db.internal/autopilot")
    src = ("import os\n"
           "leak = [k for k, v in os.environ.items() if k == 'AUTOPILOT_STORE_URL' "
           "or 's3cret' in v]\n"
           "print('FAIL ' + repr(leak) if leak else 'PASS')")
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason


def test_limits_are_in_force_inside_the_check(mode):
    src = ("import resource\n"
           "cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]\n"
           "mem = resource.getrlimit(resource.RLIMIT_AS)[0]\n"
           "print('PASS' if (cpu, mem) == (1, 256 * 1024 * 1024) else f'FAIL {cpu} {mem}')")
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason


def test_crash_and_missing_verdict_are_errors_without_temp_paths(mode):
    r = run_check("raise ValueError('boom')", {}, FAST)
    assert r.status == "error" and "ValueError: boom" in r.reason and "gate-check-" not in r.reason
    r = run_check("print('maybe')", {}, FAST)
    assert r.status == "error" and "without PASS or FAIL" in r.reason


# --------------------------------------------------------- no sandbox: refused unless opted in
def test_without_a_sandbox_program_checks_are_refused_with_the_reason(monkeypatch, tmp_path):
    without_bwrap(monkeypatch, opt_in=False)
    marker = tmp_path / "ran"
    start = time.monotonic()
    r = run_check(f"open({str(marker)!r}, 'w').write('x')\nprint('PASS')", {}, FAST)
    assert r.status == "error" and r.returncode is None
    assert "need a sandbox" in r.reason and "bwrap is not installed" in r.reason
    assert f"{ENV_UNSANDBOXED}=1" in r.reason
    assert not marker.exists() and time.monotonic() - start < 1  # nothing was started
    assert sandbox_status().mode == "refused"


def test_the_refusal_reaches_the_gate_as_an_error(monkeypatch):
    from gates.suite import ProgramVerifier, SuiteCase
    from gates.verifiers import check_output

    without_bwrap(monkeypatch, opt_in=False)
    case = SuiteCase(id="p", family="expr_eval", difficulty=1, prompt="1\n=", expected="1",
                     verifier=ProgramVerifier(source="print('PASS')\n"))
    result = check_output(case, "1")
    assert result.status == "error" and "need a sandbox" in result.reason
    monkeypatch.setenv(ENV_UNSANDBOXED, "1")
    assert check_output(case, "1").status == "pass"


@pytest.mark.parametrize("value", ["", "0", "no", "false"])
def test_only_an_explicit_opt_in_counts(monkeypatch, value):
    without_bwrap(monkeypatch, opt_in=False)
    monkeypatch.setenv(ENV_UNSANDBOXED, value)
    assert sandbox_status().mode == "refused"


def test_a_bwrap_that_cannot_run_here_is_reported(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: str(fake))
    reason = sandbox._probe_bwrap.__wrapped__()
    assert isinstance(reason, str) and "cannot" in reason and str(fake) in reason


# ----------------------------------------------------------------- escapes (bwrap only)
ESCAPE_WRITE = """\
import json, os, sys
d = json.load(sys.stdin)
escaped = []
for path in d["targets"]:
    try:
        with open(path, "w") as fh:
            fh.write("escaped")
        if not path.startswith(("/sandbox/", "/tmp/")) or path.startswith(d["host_tmp"]):
            escaped.append(path)
    except OSError:
        pass
print("FAIL wrote " + ", ".join(escaped) if escaped else "PASS")
"""


@needs_bwrap
def test_a_check_cannot_write_outside_its_private_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    host = tmp_path / "host-file.txt"
    name = f"autopilot-sandbox-escape-{uuid.uuid4().hex}.txt"
    outside = [f"/usr/{name}", f"/{name}", str(tmp_path.parent / name)]
    private = [f"/sandbox/{name}", f"/tmp/{name}"]  # the check's own tmpfs, not the host's
    targets = [str(host), *outside, "/check/check.py", *private]
    try:
        r = run_check(ESCAPE_WRITE, {"targets": targets, "host_tmp": str(tmp_path)}, FAST)
        assert r.status == "pass", r.reason
        assert not host.exists()
        assert not any(os.path.exists(p) for p in [*outside, *private])
    finally:  # should the sandbox ever fail, leave nothing behind on the host
        for p in [*outside, *private]:
            if os.path.exists(p):
                os.remove(p)


@needs_bwrap
def test_a_check_fills_only_its_capped_tmpfs(monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    src = ("import os\nn = 0\ntry:\n"
           "    while n < 10_000:\n"
           "        open(f'/sandbox/f{n}', 'wb').write(b'x' * 60_000)\n"
           "        n += 1\n"
           "except OSError as exc:\n    print('PASS' if exc.errno == 28 else f'FAIL {exc}')\n"
           "else:\n    print('FAIL wrote', n * 60_000)")
    r = run_check(src, {}, SandboxLimits(timeout_s=10, cpu_s=5))
    assert r.status == "pass", r.reason


READ_STATE = """\
import json, os, sys
d = json.load(sys.stdin)
seen = []
for path in d["files"]:
    try:
        with open(path) as fh:
            seen.append(path + ": " + fh.read(200))
    except OSError:
        pass
for path in d["dirs"]:
    try:
        seen.append(path + ": " + ",".join(os.listdir(path)))
    except OSError:
        pass
seen += [k for k in os.environ if k.startswith("AUTOPILOT")]
print("FAIL read " + " | ".join(seen) if seen else "PASS")
"""


@needs_bwrap
def test_a_check_cannot_read_the_state_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    state = tmp_path / "state"
    state.mkdir()
    secret = "postgresql+psycopg://autopilot:s3cret-password@db:5432/autopilot"
    (state / "autopilot.yaml").write_text(f"store_url: {secret}\n")
    (state / "autopilot.db").write_bytes(b"SQLite format 3\x00")
    os.chmod(state / "autopilot.yaml", 0o644)
    monkeypatch.setenv("AUTOPILOT_HOME", str(state))
    repo = os.getcwd()
    payload = {"files": [str(state / "autopilot.yaml"), str(state / "autopilot.db"),
                         os.path.expanduser("~/.autopilot/autopilot.yaml"),
                         os.path.join(repo, "pyproject.toml"), "/etc/passwd", "/etc/shadow"],
               "dirs": [str(state), str(tmp_path), os.path.expanduser("~"), repo, "/home",
                        "/root", "/var", "/etc", "/work"]}
    r = run_check(READ_STATE, payload, FAST)
    assert r.status == "pass", r.reason
    assert "s3cret" not in r.reason


@needs_bwrap
def test_a_check_cannot_open_a_socket_to_anything(monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    src = f"""\
import socket
reached = []
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("10.0.0.1", 80)]:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        reached.append(f"{{host}}:{{port}}")
    except OSError:
        pass
names = [n for _, n in socket.if_nameindex()]
try:
    socket.getaddrinfo("example.com", 80)
    reached.append("dns")
except OSError:
    pass
print("FAIL reached " + ", ".join(reached) if reached or names != ["lo"] else "PASS")
"""
    try:
        r = run_check(src, {}, SandboxLimits(timeout_s=5, cpu_s=2))
    finally:
        thread.join(5)
        server.close()
    assert r.status == "pass", r.reason
    assert accepted == []


FORK_BOMB = """\
import os, subprocess
made = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os._exit(0)
    made += 1
try:
    subprocess.run(["/bin/true"], check=False)
    made += 1
except OSError:
    pass
print("FAIL started %d processes" % made if made else "PASS")
"""


@needs_bwrap
def test_a_fork_bomb_is_bounded(monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    start = time.monotonic()
    r = run_check(FORK_BOMB, {}, FAST)
    assert r.status == "pass", r.reason
    assert time.monotonic() - start < 5


@needs_bwrap
def test_the_check_runs_unprivileged_alone_in_its_namespaces(monkeypatch):
    monkeypatch.delenv(ENV_UNSANDBOXED, raising=False)
    src = """\
import os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
pids = [p for p in os.listdir("/proc") if p.isdigit()]
problems = []
if (os.getuid(), os.getgid()) != (65534, 65534):
    problems.append(f"uid {os.getuid()}")
if int(status["CapEff"].strip(), 16):
    problems.append("capabilities " + status["CapEff"].strip())
if len(pids) > 3:
    problems.append(f"sees {len(pids)} processes")
print("FAIL " + "; ".join(problems) if problems else "PASS")
"""
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason
