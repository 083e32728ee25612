"""What a flow run works with, built once per run and handed to every task.

A task used to reopen the store, reread the settings and reload the fleet from a
``state_dir`` string; now the flow opens one ``LoopContext`` (store, fleet, settings,
telemetry warehouse, the gates' serving port, a clock) and closes it when the run ends.
Tests build one over a temporary state directory, or over fakes (the fields are ports:
anything with the methods the tasks call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from controlplane.settings import Settings, StateDir

__all__ = ["Clock", "LoopContext", "ProposalStore", "utc_now"]

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProposalStore(Protocol):
    """The part of ``store.Store`` the loop's tasks use (a recording fake implements it)."""

    def active_policy(self) -> Any: ...
    def get_policy(self, version: int) -> Any: ...
    def list_policies(self) -> list[Any]: ...
    def put_policy(self, policy: Any, *, actor: str) -> Any: ...
    def list_proposals(self) -> list[Any]: ...
    def get_proposal(self, proposal_id: str) -> Any: ...
    def create_proposal(self, **kwargs: Any) -> Any: ...
    def transition_proposal(self, proposal_id: str, state: Any, *, actor: str,
                            reason: str) -> Any: ...
    def get_approval(self, proposal_id: str) -> Any: ...
    def record_decision(self, proposal_id: str, *, approver: str, decision: str,
                        reason: str) -> Any: ...
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> bool: ...
    def audit_append(self, **kwargs: Any) -> Any: ...
    def calibration_records(self, **kwargs: Any) -> list[Any]: ...


@dataclass
class LoopContext:
    state: StateDir
    store: ProposalStore
    fleet: Any  # contracts.manifest.FleetManifest
    settings: Settings
    warehouse: Any  # telemetry.TelemetryWarehouse
    gates: Any = None  # controlplane.loop.gating.GateServing; None: chosen by the flow
    clock: Clock = field(default=utc_now)

    @property
    def telemetry_dir(self) -> Path:
        return self.state.telemetry_dir

    @classmethod
    @contextmanager
    def open(cls, state_dir: str | Path, *, gates: Any = None,
             clock: Clock = utc_now) -> Iterator[LoopContext]:
        """The context of one flow run over ``state_dir``; the store closes on exit."""
        from contracts.manifest import load_fleet
        from store import Store
        from telemetry import TelemetryWarehouse

        state = StateDir(Path(state_dir))
        store = Store.open(state.store_url(), anchor_file=state.anchors_path)
        try:
            yield cls(state=state, store=store, fleet=load_fleet(state.fleet_path),
                      settings=state.settings(),
                      warehouse=TelemetryWarehouse(state.telemetry_dir), gates=gates,
                      clock=clock)
        finally:
            store.close()
