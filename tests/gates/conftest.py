"""Fixtures for the gate tests: a small pinned fleet on disk and a 90-case suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from gates_testkit import write_fleet

from gates.suite import Suite, reference_suite


@pytest.fixture
def fleet_path(tmp_path) -> Path:
    return write_fleet(tmp_path / "fleet")


@pytest.fixture(scope="session")
def suite() -> Suite:
    """The reference generator at 6 cases per cell: 90 cases, every family and level."""
    return reference_suite(6)
