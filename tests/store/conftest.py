"""The store tests' databases: SQLite always, PostgreSQL too when AUTOPILOT_TEST_PG_URL is set
(tests/conftest.py sets it when it can start a throwaway server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from store import Store
from store.schema import metadata

PG_URL = os.environ.get("AUTOPILOT_TEST_PG_URL")
STARTER_POLICY = Path(__file__).resolve().parents[2] / "controlplane" / "starter" / "policy.yaml"


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS migration_marker"))
        metadata.drop_all(conn)
    engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(not PG_URL, reason="AUTOPILOT_TEST_PG_URL is not set"),
        ),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'autopilot.db'}"
    assert PG_URL is not None
    _reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def store(store_url: str):
    s = Store.open(store_url)
    yield s
    s.close()


@pytest.fixture
def raw(store_url: str):
    """A plain engine on the same database, for what the store's API would never do (the
    tamperer's tool)."""
    engine = sa.create_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def policies(store):
    """v1 (the starter policy, active), v2 and v3 (S on int8, then int4), stored."""
    from policies.policy import load_policy

    v1 = load_policy(STARTER_POLICY)
    v2 = v1.evolve(author="autopilot", quantization={"S": "int8"})
    v3 = v2.evolve(author="autopilot", quantization={"S": "int4"})
    for p in (v1, v2, v3):
        store.put_policy(p)
    store.activate(1, actor="init", reason="initial policy")
    return {1: v1, 2: v2, 3: v3}
