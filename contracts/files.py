"""Saving a file so that a reader sees the old bytes or the new ones, never half of them.

``atomic_write_bytes`` / ``atomic_write_text`` write ``<path>.tmp`` beside the target (its
folder made first), optionally fsync it, then rename it over the target (``os.replace``,
atomic on one file system). A failed write removes the temporary file and leaves the target
as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8",
                      fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (``encoding``, no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
