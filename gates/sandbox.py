"""Run a small, untrusted Python check in a separate process, isolated and with hard limits.

A gate suite's ``program`` verifier is code from whoever wrote the suite: it must not
reach anything of ours. Two layers:

1. **Isolation** (bubblewrap, ``bwrap`` from the OS packages; ``scripts/install.sh``
   installs the Debian package ``bubblewrap`` where it can). The check runs in new user,
   mount, PID, network, IPC and UTS namespaces: no network at all (not even the host's
   loopback), no view of the host's processes, a file system made of ``/usr`` (and the
   Python it runs) read-only, a fresh ``/proc`` and ``/dev``, its code read-only at
   ``/check``, a read-only root, and a private, size-capped (16 MiB) tmpfs at ``/sandbox``
   (its working and home directory) and ``/tmp``: nothing it writes reaches the host disk. The state directory, the store's files, ``autopilot.yaml``
   with its password, home directories and the repository are simply not there. It runs
   as ``nobody`` (uid 65534) inside the namespace with every capability dropped; when the
   product runs as root, bwrap itself is started as uid/gid 65534, so the check is
   unprivileged on the host too.
2. **Limits** (always): the check runs as ``python -I -S -B`` with an environment that
   holds nothing of ours, in its own session, under ``resource`` limits set before exec:
   CPU seconds, address space, file size (its stdout and stderr go to size-capped files),
   open files, no core files, and no new processes (``RLIMIT_NPROC`` 0: a fork bomb gets
   ``EAGAIN``; the kernel ignores it for root, which bwrap mode never is). A wall-clock
   timeout covers a check that sleeps or blocks; the whole session (and, under bwrap, the
   PID namespace) is SIGKILLed when the check ends or times out.

Where no working bwrap exists, program checks are **refused** (an ``error`` naming the
reason, so the gates that read them are ERROR) unless the operator opts in to limits-only
checks with ``AUTOPILOT_UNSANDBOXED_CHECKS=1`` (docs/security.md says what that leaves
open). ``sandbox_status()`` says which applies on this machine.

Protocol: the check reads one JSON object on stdin and prints ``PASS`` or ``FAIL <reason>``
as its last stdout line, then exits 0. Anything else is ``error``. Whatever happens,
``run_check`` returns; a hung or hostile check is killed and reported, never hangs a gate.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["ENV_UNSANDBOXED", "SandboxLimits", "SandboxResult", "SandboxStatus", "run_check",
           "sandbox_status"]

#: Set to ``1`` to run program checks with the resource limits only where bubblewrap is
#: missing or cannot run (an operator's decision: see docs/security.md).
ENV_UNSANDBOXED = "AUTOPILOT_UNSANDBOXED_CHECKS"

_OUTPUT_CAP_BYTES = 64 * 1024
_REASON_CHARS = 300
_TMPFS_BYTES = 16 * 1024 * 1024  # each of /sandbox and /tmp inside the sandbox
_NOBODY = 65534
_INSIDE = {"code": "/check", "work": "/sandbox"}


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock
    cpu_s: int = 2
    memory_mb: int = 256
    max_open_files: int = 32


@dataclass(frozen=True)
class SandboxResult:
    status: Literal["pass", "fail", "error"]
    reason: str
    returncode: int | None
    duration_s: float


@dataclass(frozen=True)
class SandboxStatus:
    """How program checks run here: ``bwrap`` (isolated), ``limits`` (operator opted in to
    limits only) or ``refused`` (no sandbox, no opt-in); ``detail`` says why."""

    mode: Literal["bwrap", "limits", "refused"]
    detail: str


# Sets the limits, then replaces itself with the check: the limits survive exec. Done in a
# launcher process rather than a ``preexec_fn``, which is unsafe when the caller has
# threads (the runner's pool, HTTP clients).
_LAUNCHER = """\
import os, resource, sys
cpu, memory, fsize, nofile = (int(v) for v in sys.argv[1:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork bombs (ignored for root)
except (ValueError, OSError):
    pass
os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", sys.argv[5]])
"""


# ---------------------------------------------------------------------- finding bwrap
@dataclass(frozen=True)
class _Bwrap:
    path: str
    python: str
    prefix: str
    user: int | None  # drop to this uid/gid before starting bwrap (when we are root)
    flags: frozenset[str]


def _world_reachable(path: Path) -> bool:
    """Every directory above ``path`` is searchable by others and ``path`` readable."""
    try:
        for parent in path.parents:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IROTH) and (stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH))


def _python_for(user: int | None) -> tuple[str, str] | None:
    """A Python the sandbox user can run, and the installation prefix to mount for it."""
    candidates = [os.path.realpath(sys.executable)]
    candidates += [os.path.realpath(p) for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.path.exists(p)]
    for exe in candidates:
        prefix = str(Path(exe).parent.parent)
        if user is None or (_world_reachable(Path(exe)) and _world_reachable(Path(prefix))):
            return exe, prefix
    return None


def _mounts(box: str, runner: _Bwrap) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if not (runner.prefix == "/usr" or runner.prefix.startswith("/usr/")):
        args += ["--ro-bind", runner.prefix, runner.prefix]
    size = ["--size", str(_TMPFS_BYTES)] if "--size" in runner.flags else []
    args += ["--proc", "/proc", "--dev", "/dev",
             *size, "--tmpfs", "/tmp", *size, "--tmpfs", _INSIDE["work"],
             "--ro-bind", box, _INSIDE["code"], "--remount-ro", "/", "--chdir", _INSIDE["work"]]
    return args


def _bwrap_command(runner: _Bwrap, box: str, argv: list[str]) -> list[str]:
    extra = ["--disable-userns"] if "--disable-userns" in runner.flags else []
    return [runner.path, "--unshare-all", "--unshare-user", *extra, "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--uid", str(_NOBODY), "--gid",
            str(_NOBODY), "--hostname", "sandbox", *_mounts(box, runner), "--",
            runner.python, *argv]


def _popen_user(runner: _Bwrap | None) -> dict[str, Any]:
    if runner is None or runner.user is None:
        return {}
    return {"user": runner.user, "group": runner.user, "extra_groups": []}


@functools.lru_cache(maxsize=1)
def _probe_bwrap() -> _Bwrap | str:
    """A bwrap that can run a Python here, or the reason there is none (cached)."""
    path = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if not path:
        return ("bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install "
                "bubblewrap; scripts/install.sh does it when run as root)")
    user = _NOBODY if os.geteuid() == 0 else None
    found = _python_for(user)
    if found is None:
        return "no Python interpreter that the sandbox user (uid 65534) can read and run"
    try:
        helptext = subprocess.run([path, "--help"], capture_output=True, text=True,
                                  timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap at {path} cannot run: {exc}"
    flags = frozenset(f for f in ("--size", "--disable-userns") if f in helptext)
    runner = _Bwrap(path, found[0], found[1], user, flags)
    with tempfile.TemporaryDirectory(prefix="gate-probe-") as tmp:
        os.chmod(tmp, 0o755)
        try:
            proc = subprocess.run(
                _bwrap_command(runner, tmp, ["-I", "-S", "-B", "-c", "print('ok')"]),
                capture_output=True, timeout=30, env=_env(), cwd="/", check=False,
                **_popen_user(runner))
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bwrap at {path} cannot run: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        why = proc.stderr.decode("utf-8", "replace").strip()[-200:] or f"exit {proc.returncode}"
        return (f"bwrap at {path} cannot create its sandbox here ({why}); user namespaces "
                "may be disabled in this container or kernel")
    return runner


def sandbox_status() -> SandboxStatus:
    """Which isolation program checks get on this machine, and why."""
    probe = _probe_bwrap()
    if isinstance(probe, _Bwrap):
        who = ("as uid 65534 on the host" if probe.user is not None
               else "as this user, nobody inside its namespace")
        return SandboxStatus("bwrap", f"bubblewrap {probe.path}, {who}, Python {probe.python}")
    if os.environ.get(ENV_UNSANDBOXED, "").strip().lower() in ("1", "true", "yes"):
        return SandboxStatus("limits", f"{probe}; {ENV_UNSANDBOXED}=1: resource limits only "
                                       "(no file-system, network or user isolation)")
    return SandboxStatus("refused", (
        f"program checks need a sandbox and none is available: {probe}. To run them with "
        f"resource limits only, set {ENV_UNSANDBOXED}=1 (see docs/security.md)"))


def _env(home: str = _INSIDE["work"]) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


# --------------------------------------------------------------------------- running
def _signal_reason(returncode: int, limits: SandboxLimits) -> str:
    signum = -returncode
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
    if signum == signal.SIGXCPU:
        return f"killed by the CPU-time limit ({limits.cpu_s} s, {name})"
    if signum == signal.SIGXFSZ:
        return f"killed for writing more than {_OUTPUT_CAP_BYTES} bytes of output ({name})"
    if signum == signal.SIGKILL:
        return f"killed by SIGKILL (CPU-time hard limit {limits.cpu_s + 1} s or the kernel)"
    return f"killed by signal {name}"


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text[-_REASON_CHARS:]


def run_check(source: str, payload: dict[str, Any], limits: SandboxLimits = SandboxLimits()
              ) -> SandboxResult:
    """Run ``source`` with ``payload`` on stdin under ``limits``, isolated by bwrap (or, where
    the operator opted in, by the limits alone); never raises for what the check does (only
    for our own failure to start a process, which is an OSError)."""
    start = time.monotonic()
    status = sandbox_status()
    if status.mode == "refused":
        return SandboxResult("error", status.detail, None, time.monotonic() - start)
    probe = _probe_bwrap()
    runner = probe if status.mode == "bwrap" and isinstance(probe, _Bwrap) else None
    with tempfile.TemporaryDirectory(prefix="gate-check-") as tmp:
        work = Path(tmp)
        box = work / "box"  # the check's code: read-only at /check under bwrap
        box.mkdir()
        script = box / "check.py"
        script.write_text(source, encoding="utf-8")
        launcher = box / "launch.py"
        launcher.write_text(_LAUNCHER, encoding="utf-8")
        stdin_path = work / "stdin.json"
        stdin_path.write_text(json.dumps(payload), encoding="utf-8")
        sizes = [str(limits.cpu_s), str(limits.memory_mb * 1024 * 1024),
                 str(_OUTPUT_CAP_BYTES), str(limits.max_open_files)]
        if runner is not None:
            os.chmod(tmp, 0o711)  # the sandbox user may pass through to box/, nothing else
            for path, mode in ((box, 0o755), (script, 0o644), (launcher, 0o644)):
                os.chmod(path, mode)
            code = _INSIDE["code"]
            command = _bwrap_command(runner, str(box), [
                "-I", "-S", "-B", f"{code}/launch.py", *sizes, f"{code}/check.py"])
            env, cwd = _env(), "/"
        else:
            command = [sys.executable, "-I", "-S", "-B", str(launcher), *sizes, str(script)]
            env, cwd = _env(home=tmp), tmp
        with open(stdin_path, "rb") as stdin, open(work / "stdout", "wb") as out, \
                open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                close_fds=True, start_new_session=True, **_popen_user(runner),
            )
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = None
            finally:
                _kill_group(proc)
        duration = time.monotonic() - start
        # The temporary path would make reasons differ run to run (and the evidence hash).
        stdout = (work / "stdout").read_bytes()[:_OUTPUT_CAP_BYTES].replace(
            tmp.encode(), b"<sandbox>")
        stderr = (work / "stderr").read_bytes()[:_OUTPUT_CAP_BYTES].replace(
            tmp.encode(), b"<sandbox>")
    if timed_out:
        return SandboxResult("error", f"killed after the wall-clock timeout of "
                                      f"{limits.timeout_s:g} s", None, duration)
    assert returncode is not None
    if runner is not None and 128 < returncode < 128 + 65:
        returncode = -(returncode - 128)  # bwrap reports a child killed by signal N as 128+N
    if returncode < 0:
        return SandboxResult("error", _signal_reason(returncode, limits), returncode, duration)
    if returncode != 0:
        detail = _tail(stderr) or _tail(stdout) or "no output"
        if "MemoryError" in detail:
            detail = f"MemoryError (address-space limit {limits.memory_mb} MiB)"
        return SandboxResult("error", f"exit status {returncode}: {detail}", returncode,
                             duration)
    lines = stdout.decode("utf-8", errors="replace").strip().splitlines()
    last = lines[-1].strip() if lines else ""
    if last == "PASS":
        return SandboxResult("pass", "check printed PASS", 0, duration)
    if last == "FAIL" or last.startswith("FAIL "):
        return SandboxResult("fail", last[5:].strip()[:_REASON_CHARS] or "check printed FAIL",
                             0, duration)
    return SandboxResult("error", f"check ended without PASS or FAIL (last line: "
                                  f"{last[:80]!r})", 0, duration)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the check's whole session (it may have started children) and reap it. Under
    bwrap the check is in a PID namespace whose init dies with bwrap (--die-with-parent),
    which takes every process in it down."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
