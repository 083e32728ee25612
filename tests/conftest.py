"""Test-session set-up shared by every test module.

When no ``AUTOPILOT_TEST_PG_URL`` is given and PostgreSQL's server binaries are on this
machine, a throwaway cluster is started on loopback for the session, so the store's tests
run against PostgreSQL as well as SQLite. Without the binaries those tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

_PG: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; the Debian package provides a `postgres` user.
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _start_postgres() -> str | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        return None
    root = Path(tempfile.mkdtemp(prefix="autopilot-pg-"))
    data = root / "data"
    port = _free_port()
    try:
        if os.geteuid() == 0:
            shutil.chown(root, user="postgres")
        subprocess.run(_as_postgres_user([initdb, "-D", str(data), "-U", "autopilot",
                                          "--auth=trust", "-E", "UTF8"]),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres_user([
            pg_ctl, "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"),
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start"]), check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError, LookupError):
        shutil.rmtree(root, ignore_errors=True)
        return None
    _PG.update(root=root, data=data, pg_ctl=pg_ctl)
    return f"postgresql+psycopg://autopilot@127.0.0.1:{port}/postgres"


def pytest_configure(config) -> None:
    if os.environ.get("AUTOPILOT_TEST_PG_URL") or os.environ.get("AUTOPILOT_TEST_NO_PG"):
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return
    url = _start_postgres()
    if url:
        os.environ["AUTOPILOT_TEST_PG_URL"] = url


def pytest_unconfigure(config) -> None:
    if not _PG:
        return
    subprocess.run(_as_postgres_user([str(_PG["pg_ctl"]), "-D", str(_PG["data"]), "-m",
                                      "immediate", "stop"]), capture_output=True, timeout=60, check=False)
    shutil.rmtree(str(_PG["root"]), ignore_errors=True)
