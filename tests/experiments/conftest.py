"""Shared fixtures: a small fleet with variants and an adapter, and simulated windows."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiments_testkit import FLEET_YAML, POLICY_YAML, simulate_window


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    from contracts.manifest import load_fleet

    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    path.write_text(FLEET_YAML)
    return load_fleet(path)


@pytest.fixture(scope="session")
def fleet_path(fleet, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fleetfile") / "fleet.yaml"
    path.write_text(FLEET_YAML)
    return path


@pytest.fixture(scope="session")
def logging_policy():
    from policies.policy import load_policy

    return load_policy(POLICY_YAML)


@pytest.fixture(scope="session")
def logged(logging_policy, fleet, tmp_path_factory):
    """A 4,000-task day logged by a score router with 30% exploration."""
    spans, window = simulate_window(logging_policy, fleet, tmp_path_factory.mktemp("logged"),
                                    tasks=4000, seed=11)
    return spans, window


@pytest.fixture(scope="session")
def models(logged):
    from experiments.outcomes import fit_outcome_models

    return fit_outcome_models(logged[1])
