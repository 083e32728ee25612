"""When the nightly's lease is held by a run that is gone: the rule, and the process probe.

A nightly run holds the store's ``nightly`` lease as ``"<host>:<pid>:<nonce>"`` for 6 hours
(``controlplane.flows``). A run killed without its ``finally`` (a segfault, ``kill -9``, a
power cut) used to keep the lease for the whole 6 hours, so the next nights skipped. A
lease held by a process *on this same host* that no longer exists is stale: the next run
breaks it (audited, with the reason) and takes it. A holder on another host, a holder
whose process still runs (or may: a process we may not signal), or a holder in another
format is never broken here; its lease ends when it expires.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LeaseHolder", "parse_holder", "pid_alive", "stale_holder", "stale_reason"]


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int
    nonce: str


def parse_holder(holder: str) -> LeaseHolder | None:
    """``"<host>:<pid>:<nonce>"`` as its parts, or None for any other format."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid, nonce = parts
    if not host or not pid.isdigit() or not pid.isascii() or int(pid) <= 0:
        return None
    return LeaseHolder(host, int(pid), nonce)


def stale_reason(holder: str, this_host: str, pid_alive: Callable[[int], bool]) -> str | None:
    """Why the lease held by ``holder`` may be broken, or None when it may not: only a
    holder on ``this_host`` whose process ``pid_alive`` says is gone is stale."""
    parsed = parse_holder(holder)
    if parsed is None or parsed.host != this_host:
        return None
    if pid_alive(parsed.pid):
        return None
    return f"holder process {parsed.pid} no longer runs on host {this_host}"


def stale_holder(holder: str, this_host: str, pid_alive: Callable[[int], bool]) -> bool:
    """True when ``holder`` is a process on ``this_host`` that no longer exists."""
    return stale_reason(holder, this_host, pid_alive) is not None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as
    alive: never break a lease on a guess)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
