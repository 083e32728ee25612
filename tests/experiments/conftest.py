"""Shared fixtures: a small fleet with variants and an adapter, and simulated windows."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiments_testkit import FLEET, POLICY_YAML, simulate_window


@pytest.fixture(scope="session")
def fleet():
    return FLEET


@pytest.fixture(scope="session")
def fleet_path(fleet, tmp_path_factory) -> Path:
    from contracts.manifest import save_fleet

    return save_fleet(fleet, tmp_path_factory.mktemp("fleetfile") / "fleet.yaml")


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
