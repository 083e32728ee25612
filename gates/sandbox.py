"""Run a small, untrusted Python check in a separate process with hard limits.

The check runs as ``python -I`` (isolated: no user site, no PYTHON* variables, the script's
directory not on the path) in a fresh temporary directory, with an environment that holds
nothing from ours (no tokens, no database URLs), in its own session so that it and anything
it starts can be killed together, under ``resource`` limits set in the child before exec:
CPU seconds, address space, file size (its stdout and stderr go to size-capped files, so
it cannot flood us), open files, and no new processes. A wall-clock timeout covers a check
that sleeps or blocks. Whatever happens, ``run_check`` returns: a hung or hostile check is
killed and reported as ``error`` with the reason; it never hangs the gate.

Protocol: the check reads one JSON object on stdin and prints ``PASS`` or ``FAIL <reason>``
as its last stdout line, then exits 0. Anything else is ``error``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["SandboxLimits", "SandboxResult", "run_check"]

_OUTPUT_CAP_BYTES = 64 * 1024
_REASON_CHARS = 300


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


def _command(limits: SandboxLimits, launcher: Path, script: Path) -> list[str]:
    return [sys.executable, "-I", "-S", "-B", str(launcher), str(limits.cpu_s),
            str(limits.memory_mb * 1024 * 1024), str(_OUTPUT_CAP_BYTES),
            str(limits.max_open_files), str(script)]


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
    """Run ``source`` with ``payload`` on stdin under ``limits``; never raises for what the
    check does (only for our own failure to start a process, which is an OSError)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gate-check-") as tmp:
        work = Path(tmp)
        script = work / "check.py"
        script.write_text(source, encoding="utf-8")
        launcher = work / "launch.py"
        launcher.write_text(_LAUNCHER, encoding="utf-8")
        stdin_path = work / "stdin.json"
        stdin_path.write_text(json.dumps(payload), encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
        with open(stdin_path, "rb") as stdin, open(work / "stdout", "wb") as out, \
                open(work / "stderr", "wb") as err:
            proc = subprocess.Popen(
                _command(limits, launcher, script), cwd=tmp, env=env, stdin=stdin,
                stdout=out, stderr=err, close_fds=True, start_new_session=True,
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
    """Kill the check's whole session (it may have started children) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
