"""Creating a state directory, and recording what the CLI did in the audit log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from controlplane.settings import StateDir

__all__ = ["initialise_state", "record_ingest", "STARTER_DIR"]

STARTER_DIR = Path(__file__).parent / "starter"
INIT_ACTOR = "autopilot-init"


def initialise_state(
    state: StateDir,
    *,
    fleet_file: Path | None = None,
    policy_file: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write settings and fleet (validated first), open the store, activate policy v1.

    Idempotent: on an existing state directory nothing is overwritten unless ``force``,
    and an active policy is never replaced (promotion is the only way to change it).
    """
    from controlplane.store import Store
    from policies.policy import load_policy, validate_against_fleet
    from serving.manifest import load_fleet

    fleet_src = fleet_file or STARTER_DIR / "fleet.yaml"
    policy_src = policy_file or STARTER_DIR / "policy.yaml"
    fleet = load_fleet(fleet_src)  # refuse bad input before touching the directory
    policy = load_policy(policy_src)
    validate_against_fleet(policy, fleet)

    state.root.mkdir(parents=True, exist_ok=True)
    for d in (state.telemetry_dir, state.spans_dir, state.reports_dir, state.policies_dir):
        d.mkdir(exist_ok=True)
    wrote = []
    if force or not state.settings_path.exists():
        shutil.copyfile(STARTER_DIR / "autopilot.yaml", state.settings_path)
        wrote.append(state.settings_path.name)
    if force or not state.fleet_path.exists():
        shutil.copyfile(fleet_src, state.fleet_path)
        wrote.append(state.fleet_path.name)
    state.settings()  # validate what is there now, even if it was not written by us

    store = Store.open(state.store_url())
    active = store.active_policy()
    if active is None:
        store.put_policy(policy)
        store.activate(policy.metadata.version, actor=INIT_ACTOR, reason="initial policy")
        active = store.active_policy()
    return {
        "state_dir": str(state.root),
        "wrote": ", ".join(wrote) or "nothing (already initialised)",
        "store": _redact(state.store_url()),
        "fleet": f"{fleet.metadata.name} ({len(fleet.tiers)} tiers, {fleet.content_hash[:12]})",
        "active_policy": f"v{active.policy.metadata.version} ({active.policy.content_hash[:12]})",
    }


def record_ingest(store: Any, report: dict[str, Any]) -> None:
    store.audit_append(actor="autopilot-cli", action="telemetry.ingest", subject="telemetry",
                       payload={k: v for k, v in report.items() if _jsonable(v)})


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), dict, list))


def _redact(url: str) -> str:
    """Never print a database password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
