"""Fixtures for the gate tests: a small pinned fleet on disk and a 90-case suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from gates_testkit import write_fleet

from gates.suite import Suite, reference_suite


@pytest.fixture(autouse=True)
def _program_checks_run_somewhere(monkeypatch, request):
    """Program checks need a sandbox (bubblewrap, installed by scripts/install.sh). On a
    machine without one, the gate tests that are not about the sandbox itself run them
    with resource limits only (the documented opt-in); test_sandbox.py tests both paths."""
    from gates.sandbox import ENV_UNSANDBOXED, sandbox_status

    if request.module.__name__.endswith("test_sandbox"):
        return
    if sandbox_status().mode == "refused":
        monkeypatch.setenv(ENV_UNSANDBOXED, "1")


@pytest.fixture
def fleet_path(tmp_path) -> Path:
    return write_fleet(tmp_path / "fleet")


@pytest.fixture(scope="session")
def suite() -> Suite:
    """The reference generator at 6 cases per cell: 90 cases, every family and level."""
    return reference_suite(6)
