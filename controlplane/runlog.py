"""Engine output to a log file: ``autopilot serve`` and ``demo`` print progress lines, and
what Ray, Ray Serve and vLLM print (minutes of it) goes to ``<state dir>/logs/``.

The redirection is at the file-descriptor level, so it also catches what Ray forwards from
its workers, C++ logging and child processes started meanwhile; the caller's ``echo`` keeps
writing to the console. ``-v`` (``verbose``) leaves everything on the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

__all__ = ["ENGINE_LOGGERS", "engine_logs_to_file", "log_path_for"]

#: Loggers whose records go to the log file (never the console) unless verbose.
ENGINE_LOGGERS = ("ray", "vllm", "serving", "prefect", "uvicorn", "httpx")

# vLLM installs its own console handler on import unless told not to; with this set its
# records propagate to the root logger, and so to the log file.
_QUIET_ENV = {"VLLM_CONFIGURE_LOGGING": "0"}


def log_path_for(logs_dir: str | os.PathLike[str], command: str,
                 now: datetime | None = None) -> Path:
    """``<logs_dir>/<command>-<UTC stamp>.log``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path(logs_dir) / f"{command}-{stamp}.log"


@contextlib.contextmanager
def engine_logs_to_file(logs_dir: str | os.PathLike[str] | None, command: str, *,
                        verbose: bool = False) -> Iterator[tuple[Callable[[str], None],
                                                                 Path | None]]:
    """Yield ``(echo, log_path)``. Unless ``verbose`` (or no ``logs_dir``): file
    descriptors 1 and 2 point at the log file until the block ends, Python logging of
    ``ENGINE_LOGGERS`` goes there too, and ``echo`` writes progress lines to the console
    (and a copy to the log). Verbose: nothing changes, ``echo`` prints, no log file."""
    if verbose or logs_dir is None:
        yield (lambda line: print(line, flush=True)), None
        return
    path = log_path_for(logs_dir, command)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    console: TextIO = os.fdopen(os.dup(saved[1]), "w", encoding="utf-8", buffering=1)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.INFO, logging.INFO))
    quieted = []
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        quieted.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = []
        logger.propagate = True
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)

    def echo(line: str) -> None:
        console.write(f"{line}\n")
        log.write(f"{line}\n")

    echo(f"engine logs: {path} (-v to see them here)")
    try:
        yield echo, path
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for logger, handlers, propagate in quieted:
            logger.handlers, logger.propagate = handlers, propagate
        root.removeHandler(handler)
        root.setLevel(old_level)
        console.close()
        log.close()
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
