"""Creating a state directory, and recording what the CLI did in the audit log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from controlplane.settings import StateDir

__all__ = ["SAMPLE_SPANS", "STARTER_DIR", "ingest_sample", "initialise_state", "link_relative_paths",
           "record_ingest"]

STARTER_DIR = Path(__file__).parent / "starter"
#: Two simulated days of spans (``python -m controlplane.starter.make_sample`` writes it).
SAMPLE_SPANS = STARTER_DIR / "sample_spans.jsonl"
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
    from contracts.manifest import load_fleet
    from policies.policy import load_policy, validate_against_fleet
    from store import Store

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
        linked = link_relative_paths(fleet, Path(fleet_src).resolve().parent, state.root)
        if linked:
            wrote.append(f"links to {', '.join(linked)}")
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
        "store": state.display_store_url(),
        "fleet": f"{fleet.metadata.name} ({len(fleet.tiers)} tiers, {fleet.content_hash[:12]})",
        "active_policy": f"v{active.policy.metadata.version} ({active.policy.content_hash[:12]})",
    }


def link_relative_paths(fleet: Any, source_dir: Path, state_root: Path) -> list[str]:
    """Keep the manifest's relative weight and adapter paths valid in the state directory.

    Relative paths resolve against the manifest's own folder; rather than rewriting them
    (which would change the manifest's content hash), the state directory gets a symlink
    for each top-level folder they name, pointing into the source folder.
    """
    tops: set[str] = set()
    for tier in fleet.spec.tiers:
        for variant in tier.variants:
            # An API-priced variant has no weights (and no adapters) to link.
            paths = [variant.weights, *(a.path for a in variant.adapters)]
            for raw in filter(None, paths):
                p = Path(raw)
                if not p.is_absolute() and (source_dir / p).exists():
                    tops.add(p.parts[0])
    linked = []
    for top in sorted(tops):
        target = (source_dir / top).resolve()
        link = state_root / top
        if source_dir.resolve() == state_root.resolve():
            continue
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == target:
                continue
            if link.is_symlink():
                link.unlink()
            else:
                continue  # a real folder of the owner's: never replaced
        link.symlink_to(target, target_is_directory=True)
        linked.append(top)
    return linked


def ingest_sample(state: StateDir) -> dict[str, Any]:
    """Ingest the shipped sample telemetry (``autopilot init --sample``); idempotent (ingest
    skips spans it already holds). Recorded in the audit log like any ingest."""
    from store import Store
    from telemetry.ingest import ingest_paths

    report = ingest_paths([SAMPLE_SPANS], state.telemetry_dir).as_dict()
    with Store.open(state.store_url()) as store:
        record_ingest(store, report)
    return report


def record_ingest(store: Any, report: dict[str, Any]) -> None:
    store.audit_append(actor="autopilot-cli", action="telemetry.ingest", subject="telemetry",
                       payload={k: v for k, v in report.items() if _jsonable(v)})


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), dict, list))

