"""Anchors of the audit chain kept outside the database: what makes a rewritten log show.

A hash chain alone cannot tell a log that was truncated and given a new head, or whose
entries were all rewritten and re-hashed, from an honest one. An anchor is the chain head
(``seq``, ``entry_hash``, the entry's ``ts``) copied somewhere the database's writer does not
control: a file (``autopilot audit anchor --out``), a report, a ticket. ``audit verify``
then requires the log to still hold that entry with that hash at that seq.

The store appends one anchor per line to its anchor file (``$AUTOPILOT_HOME/audit/
anchors.jsonl`` by default) after every promotion, rollback and end of a canary: append-only,
each line written with one ``write`` on an ``O_APPEND`` descriptor and fsynced, so a reader
sees whole lines. Text forms accepted: the JSON object (``Anchor.as_dict``), JSON lines of
them, or ``HASH@SEQ`` (a hash prefix of at least 12 hex digits is accepted; the full hash is
the strong check).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from store.errors import StoreError

__all__ = ["ANCHOR_FILE", "ANCHOR_SCHEMA", "Anchor", "AnchorError", "append_anchor",
           "parse_anchor_text", "read_anchor_file"]

ANCHOR_SCHEMA = "autopilot.audit-anchor"
ANCHOR_FILE = Path("audit") / "anchors.jsonl"  # under the state directory
_MIN_PREFIX = 12
_SHORT = re.compile(r"(?P<hash>[0-9a-fA-F]{12,64})@(?P<seq>\d+)")


class AnchorError(StoreError):
    """Text that is not an anchor (names where and what is wrong)."""


@dataclass(frozen=True)
class Anchor:
    """The audit chain head at one moment: entry ``seq`` had hash ``entry_hash``."""

    seq: int
    entry_hash: str
    ts: str | None = None  # the entry's time (ISO-8601 UTC)
    anchored_at: str | None = None
    source: str = ""  # where it was read from (file:line, or the text given)

    @property
    def text(self) -> str:
        return f"{self.entry_hash}@{self.seq}"

    def as_dict(self) -> dict[str, Any]:
        return {"schema": ANCHOR_SCHEMA, "seq": self.seq, "entry_hash": self.entry_hash,
                "ts": self.ts, "anchored_at": self.anchored_at, "anchor": self.text}

    def matches(self, entry_hash: str) -> bool:
        return entry_hash.lower().startswith(self.entry_hash.lower())


def _from_mapping(data: Any, source: str) -> Anchor:
    if not isinstance(data, dict):
        raise AnchorError(f"{source}: an anchor is a JSON object, not {type(data).__name__}")
    seq, entry_hash = data.get("seq"), data.get("entry_hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AnchorError(f"{source}: seq must be a non-negative integer (got {seq!r})")
    if not isinstance(entry_hash, str) or not re.fullmatch(r"[0-9a-fA-F]{12,64}", entry_hash):
        raise AnchorError(f"{source}: entry_hash must be 12 to 64 hex digits "
                          f"(got {entry_hash!r})")
    ts, at = data.get("ts"), data.get("anchored_at")
    return Anchor(seq, entry_hash.lower(), ts if isinstance(ts, str) else None,
                  at if isinstance(at, str) else None, source)


def parse_anchor_text(text: str, *, source: str = "") -> list[Anchor]:
    """Anchors from ``HASH@SEQ``, one JSON object, or JSON lines of them."""
    stripped = text.strip()
    source = source or stripped[:40]
    short = _SHORT.fullmatch(stripped)
    if short:
        return [Anchor(int(short["seq"]), short["hash"].lower(), source=source)]
    if not stripped:
        return []
    if "@" in stripped and not stripped.startswith("{"):
        raise AnchorError(f"{source}: not HASH@SEQ (12 to 64 hex digits of the entry hash, "
                          "@, the entry's seq)")
    try:
        return [_from_mapping(json.loads(stripped), source)]
    except ValueError:
        pass  # not one JSON document: JSON lines
    anchors = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except ValueError as err:
            raise AnchorError(f"{where}: not JSON ({err})") from None
        anchors.append(_from_mapping(data, where))
    return anchors


def read_anchor_file(path: str | Path) -> list[Anchor]:
    """The anchors a file holds (none if it does not exist); a bad line raises
    ``AnchorError`` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_anchor_text(text, source=str(path))


def append_anchor(path: str | Path, anchor: Anchor, *, anchored_at: datetime) -> Path:
    """Append ``anchor`` as one JSON line (the folder made first); one ``write`` on an
    ``O_APPEND`` descriptor, then fsync: never half a line, never a rewrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**anchor.as_dict(), "anchored_at": anchored_at.isoformat()}
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path
