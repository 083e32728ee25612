"""Atomic saves (contracts.files): the target holds the old bytes or the new, never half."""

from __future__ import annotations

import pytest

from contracts import atomic_write_bytes, atomic_write_text


def test_writes_into_a_new_folder_and_replaces_whole(tmp_path):
    target = tmp_path / "a" / "b" / "fleet.yaml"
    assert atomic_write_text(target, "one\n") == target
    assert atomic_write_text(str(target), "two\n") == target
    assert target.read_bytes() == b"two\n"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["fleet.yaml"]


def test_text_is_utf8_without_newline_translation(tmp_path):
    target = atomic_write_text(tmp_path / "t.txt", "é\r\nx\n", fsync=True)
    assert target.read_bytes() == "é\r\nx\n".encode()


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    target = atomic_write_text(tmp_path / "policy.yaml", "kept\n")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]
