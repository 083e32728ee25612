"""Quarantine files keep the source lines verbatim, so they are never readable by more than
the span files were (issue 14, defect 11): 0600 at most, narrowed by each source's mode."""

from __future__ import annotations

import os
import stat

import pytest
from telemetry_testkit import workload, write_flat

from telemetry.ingest import ingest_paths
from telemetry.warehouse import QUARANTINE_MODE, quarantine_mode, write_quarantine


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _with_bad_line(path, mode):
    src = write_flat(path, workload(2))
    with open(src, "a", encoding="utf-8") as fh:
        fh.write('{"not": "a span"\n')  # malformed JSON: quarantined
    os.chmod(src, mode)
    return src


def test_the_mode_rule():
    assert quarantine_mode() == QUARANTINE_MODE == 0o600
    assert quarantine_mode([0o100644]) == 0o600  # never wider than 0600
    assert quarantine_mode([0o640, 0o400]) == 0o400  # narrowed by every source
    assert quarantine_mode([0o060]) == 0o000


@pytest.mark.parametrize(("source", "expected"), [(0o644, 0o600), (0o666, 0o600),
                                                   (0o600, 0o600), (0o400, 0o400)])
def test_ingest_writes_quarantine_no_wider_than_its_source(tmp_path, source, expected):
    old = os.umask(0o000)  # even a permissive umask never widens the file
    try:
        src = _with_bad_line(tmp_path / "s.jsonl", source)
        report = ingest_paths([src], tmp_path / "tel")
    finally:
        os.umask(old)
    assert report.quarantined_total >= 1 and report.quarantine_file
    assert _mode(report.quarantine_file) == expected
    assert _mode(tmp_path / "tel" / "quarantine") == 0o700


def test_two_sources_give_the_narrower_mode(tmp_path):
    a = _with_bad_line(tmp_path / "a.jsonl", 0o640)
    b = _with_bad_line(tmp_path / "b.jsonl", 0o400)
    report = ingest_paths([a, b], tmp_path / "tel")
    assert _mode(report.quarantine_file) == 0o400


def test_write_quarantine_defaults_to_owner_only(tmp_path):
    path = write_quarantine(tmp_path, [{"reason": "x", "original": "secret"}])
    assert _mode(path) == 0o600
