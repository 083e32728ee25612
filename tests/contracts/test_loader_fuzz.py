"""Standing fuzz suite (issue 14): the public loaders, reading files from disk.

``test_document_fuzz`` drives ``load_yaml_document`` with text and bytes in memory; this one
goes through the entry points the CLI and the loop call, with the document in a file:
``load_policy(Path)``, ``load_fleet(str path)`` and ``StateDir(root).settings()``. The file
holds random bytes, byte-level mutations of the starter documents (truncated, flipped,
spliced, re-encoded), or another kind's document; the path itself may name something that
is not a regular file. Property: a model or ``DocumentError``, never a foreign exception,
never a hang (an interval timer fails the example rather than blocking the suite).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.documents import DocumentError
from contracts.manifest import FleetManifest, load_fleet
from controlplane.settings import Settings, StateDir
from policies.policy import Policy, load_policy

STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter"
FILES = {"policy": "policy.yaml", "fleet": "fleet.yaml", "settings": "autopilot.yaml"}
STARTER_BYTES = {kind: (STARTER / name).read_bytes() for kind, name in FILES.items()}
MODELS = {"policy": Policy, "fleet": FleetManifest, "settings": Settings}
SECONDS_PER_LOAD = 5

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    """Raised by the interval timer: the loader ran past SECONDS_PER_LOAD."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _alarm(signum: int, frame: Any) -> None:
        raise Hang(f"loader still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Each loader as its caller uses it: the policy by Path, the fleet by a str path, the
# settings through the state directory (the file must be ``autopilot.yaml`` there).
LOADERS: dict[str, Callable[[Path], Any]] = {
    "policy": lambda path: load_policy(path),
    "fleet": lambda path: load_fleet(str(path)),
    "settings": lambda path: StateDir(path.parent).settings(),
}


def load_or_refuse(kind: str, path: Path) -> Any:
    start = time.monotonic()
    try:
        with time_limit(SECONDS_PER_LOAD):
            result = LOADERS[kind](path)
    except DocumentError as err:
        assert err.problems and len(str(err)) < 60_000
        return err
    assert time.monotonic() - start < SECONDS_PER_LOAD
    assert isinstance(result, MODELS[kind]), result
    return result


def load_file(kind: str, content: bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILES[kind]
        path.write_bytes(content)
        return load_or_refuse(kind, path)


KINDS = st.sampled_from(sorted(FILES))


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """The starter document with a few byte-level edits."""
    data = bytearray(STARTER_BYTES[kind])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40)
                               | st.sampled_from([b"\x00", b"\xff\xfe", b"\t", b"\r", b"\xc3",
                                                  b": ", b"- ", b"&a ", b"*a", b"!!", b".nan",
                                                  b"[" * 200, b"{" * 200, b"9" * 400]))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 60))]
        elif data:
            end = min(len(data), at + draw(st.integers(1, 200)))
            data[end:end] = data[at:end]
    return bytes(data)


@FUZZ
@given(KINDS, st.binary(max_size=3000))
def test_a_file_of_random_bytes_is_loaded_or_refused(kind, content):
    load_file(kind, content)


@FUZZ
@given(KINDS, st.data())
def test_a_starter_document_with_byte_edits_is_loaded_or_refused(kind, data):
    load_file(kind, data.draw(mutated(kind)))


@FUZZ
@given(KINDS, st.sampled_from(sorted(FILES)),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1", "crlf", "cr"]))
def test_any_starter_document_in_any_encoding_is_loaded_or_refused(kind, source, encoding):
    text = STARTER_BYTES[source].decode("utf-8")
    if encoding == "crlf":
        content = text.replace("\n", "\r\n").encode()
    elif encoding == "cr":
        content = text.replace("\n", "\r").encode()
    else:
        content = text.encode(encoding, "replace")
    result = load_file(kind, content)
    if kind != source:  # another kind's document is never this kind
        assert isinstance(result, DocumentError)


@FUZZ
@given(KINDS, st.lists(st.sampled_from(sorted(FILES)), min_size=1, max_size=3),
       st.sampled_from([b"", b"\n---\n", b"\n...\n", b"\n"]))
def test_concatenated_documents_are_loaded_or_refused(kind, sources, joiner):
    load_file(kind, joiner.join(STARTER_BYTES[s] for s in sources))


def test_the_unchanged_starter_files_load():
    for kind in FILES:
        assert isinstance(load_file(kind, STARTER_BYTES[kind]), MODELS[kind])


@pytest.mark.parametrize("kind", ["policy", "fleet"])
@pytest.mark.parametrize("name", [".", "/", "/dev/null", "/dev/zero", "/proc/self/status",
                                  "/proc/self/fd", "/etc/hostname", "nonexistent\x00name"])
def test_a_path_that_is_not_a_document_is_refused(kind, name):
    loader = {"policy": load_policy, "fleet": load_fleet}[kind]
    with time_limit(SECONDS_PER_LOAD):
        try:
            loader(name)
        except DocumentError as err:
            assert err.problems
        else:  # pragma: no cover - none of these is a policy or a fleet
            pytest.fail(f"{name!r} loaded as a {kind}")


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("shape", ["directory", "symlink_loop", "dangling", "fifo",
                                   "to_dev_zero", "empty", "oversized"])
def test_a_document_path_that_is_not_a_readable_file_is_refused(tmp_path, kind, shape):
    path = tmp_path / FILES[kind]
    if shape == "directory":
        path.mkdir()
    elif shape == "symlink_loop":
        path.symlink_to(path)
    elif shape == "dangling":
        path.symlink_to(tmp_path / "missing.yaml")
    elif shape == "fifo":
        os.mkfifo(path)
    elif shape == "to_dev_zero":
        path.symlink_to("/dev/zero")
    elif shape == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"# padding\n" * (300 * 1024))
    if kind == "settings" and shape in ("dangling", "symlink_loop", "directory", "fifo",
                                        "to_dev_zero"):
        # The state directory reads settings only from a regular file; anything else is
        # "no settings file" and the defaults apply (never a hang on a FIFO).
        with time_limit(SECONDS_PER_LOAD):
            assert StateDir(tmp_path).settings() == Settings()
        return
    assert isinstance(load_or_refuse(kind, path), DocumentError)
