"""Where the autopilot keeps its state, and the settings a platform owner writes.

Spec and status are apart: ``autopilot.yaml`` (settings) and ``fleet.yaml`` are written by
people; the store, telemetry and reports under the same directory are written by the
controller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from contracts.documents import Strict, dump_yaml, load_yaml_document
from serving.collector import CollectorSpec

__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_STATE_DIR",
    "ENV_STORE_URL",
    "AutoApprovalRule",
    "DistillSettings",
    "Risk",
    "Settings",
    "StateDir",
    "VerifySettings",
    "display_url",
    "resolve_state_dir",
]

ENV_STATE_DIR = "AUTOPILOT_HOME"
#: The store's URL (with its password) from the environment: it beats ``store_url`` in
#: ``autopilot.yaml``, is never written back to it, and never reaches a gate's sandbox.
ENV_STORE_URL = "AUTOPILOT_STORE_URL"
DEFAULT_STATE_DIR = Path("~/.autopilot")


Risk = Literal["low", "medium", "high"]


class AutoApprovalRule(Strict):
    """Approve proposals of ``lever`` ("*": any lever) without a person, within bounds."""

    lever: str = Field(min_length=1)
    max_risk: Risk = "low"
    min_predicted_saving: float = Field(
        default=0.0, ge=0, le=1,
        description="the predicted relative drop in cost per Green PR must be at least this")
    max_fpy_drop: float = Field(
        default=0.0, ge=0, le=1, description="the predicted FPY may fall by at most this")


class VerifySettings(Strict):
    """How the verify flow judges a promoted policy (``verify:`` in ``autopilot.yaml``)."""

    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="error budget over all looks")
    margin: float = Field(default=0.05, ge=0, le=1,
                          description="tolerated relative rise of cost per Green PR")
    fpy_margin: float | None = Field(
        default=None, ge=0, le=1,
        description="tolerated absolute FPY drop; unset: FPY is reported, never a rollback "
        "reason (a cheap-first cascade lowers FPY by construction)")
    green_margin: float = Field(
        default=0.05, ge=0, le=1,
        description="tolerated relative drop of the Green PR rate (Green PRs per task)")
    min_tasks: int = Field(default=200, ge=2,
                           description="tasks per window before VERIFIED may be declared")
    max_looks: int = Field(default=7, ge=1, description="nightly looks before settling")


class ExplorationSettings(Strict):
    """Exploration changes (``experiments.exploration``): shadow attempts bought where thin
    evidence blocks a promising candidate, within a budget set as a share of spend."""

    enabled: bool = Field(default=True, description="propose exploration changes nightly")
    budget_share: float = Field(
        default=0.02, ge=0, le=0.2,
        description="share of the window's spend exploration may add (shown as $ per day)")


class RolloutSettings(Strict):
    """Progressive delivery of a promoted change (docs/loop.md): the canary's steps as
    shares of new tasks; the last step, 1.0, is the promotion. ``[1.0]``: promote at once."""

    steps: list[float] = Field(default_factory=lambda: [0.25, 1.0], min_length=1)
    min_tasks: int = Field(default=150, ge=2,
                           description="tasks in each arm before a step may advance")
    exempt_levers: list[str] = Field(
        default_factory=lambda: ["exploration"],
        description="levers promoted at once (exploration changes nothing callers see)")

    @field_validator("steps")
    @classmethod
    def _ascending_to_one(cls, v: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in v) or any(b <= a for a, b in pairwise(v)) \
                or v[-1] != 1.0:
            raise ValueError(f"steps must rise strictly within (0, 1] and end at 1.0 (got {v})")
        return v


class DistillSettings(Strict):
    """``autopilot.yaml`` ``distillation:`` section. Everything is off by default."""

    collect: CollectorSpec = CollectorSpec()
    nightly: bool = Field(default=False, description="run the distillation step nightly")
    target_tier: str | None = Field(default=None, description="default: the cheapest tier")
    target_pass_rate: float = Field(default=0.6, gt=0, le=1)
    min_upper_share: float = Field(default=0.5, ge=0, le=1)
    min_examples: int = Field(default=200, ge=1)
    max_examples: int = Field(default=5000, ge=1)
    teacher_examples: int = Field(
        default=0, ge=0, description="top-tier answers to add when the collected set is short")
    steps: int = Field(default=2000, ge=1)
    nightly_step_budget: int = Field(
        default=4000, ge=0, description="optimizer steps the nightly step may spend")
    eval_tasks: int = Field(default=200, ge=0)
    seed: int = 0


class Settings(Strict):
    api_version: Literal["autopilot/v1"] = Field(default="autopilot/v1", alias="apiVersion")
    kind: Literal["Settings"] = "Settings"
    store_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the state "
        "directory; $AUTOPILOT_STORE_URL beats it (keep a password out of this file)"
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP endpoint for spans; default: JSON lines on disk"
    )
    platform_owners: list[str] = Field(default_factory=list)
    default_verifier_cost_usd: float = Field(
        default=0.0, ge=0, description="verifier cost of a task whose span carries none"
    )
    runaway_attempts: int = Field(
        default=10, ge=1, description="a task with more attempts than this is a runaway loop"
    )
    finops: dict[str, Any] = Field(
        default_factory=dict, description="FinOps register targets (see economics.finops)"
    )
    auto_approve: list[AutoApprovalRule] = Field(
        default_factory=list,
        description="auto-approval rules (controlplane.loop.approvals.AutoApprovalRule); "
        "empty: a platform owner decides every proposal",
    )
    approval_timeout_s: int = Field(
        default=3600, ge=1, description="the nightly flow waits this long; then it is a rejection"
    )
    require_api_keys: bool = Field(
        default=False, description="the gateway refuses calls without a valid API key "
        "(`autopilot keys create`) even on loopback; beyond loopback keys are always required"
    )
    nightly_cron: str = Field(default="0 2 * * *", description="when the nightly flow runs")
    timezone: str = Field(default="UTC", description="time zone of nightly_cron")
    verify: VerifySettings = Field(
        default_factory=VerifySettings,
        description="sequential verification of promoted policies (docs/loop.md)",
    )
    rollout: RolloutSettings = Field(
        default_factory=RolloutSettings,
        description="canary steps of a promoted change (docs/loop.md)",
    )
    exploration: ExplorationSettings = Field(
        default_factory=ExplorationSettings,
        description="exploration changes and their budget (docs/loop.md)",
    )
    distillation: DistillSettings = Field(
        default_factory=DistillSettings,
        description="distillation lever: collection (opt-in per family) and the nightly "
        "step; everything off by default (docs/distillation.md)",
    )

    def finops_targets(self):
        from economics.finops import FinOpsTargets

        return FinOpsTargets.model_validate(self.finops)


@dataclass(frozen=True)
class StateDir:
    """The layout of one state directory (embedded default: everything under one folder)."""

    root: Path

    @property
    def settings_path(self) -> Path:
        return self.root / "autopilot.yaml"

    @property
    def fleet_path(self) -> Path:
        return self.root / "fleet.yaml"

    @property
    def telemetry_dir(self) -> Path:
        return self.root / "telemetry"

    @property
    def spans_dir(self) -> Path:
        """Where the embedded default's JSON-lines span exporter writes, before ingest."""
        return self.root / "spans"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def logs_dir(self) -> Path:
        """Where ``serve`` and ``demo`` write what Ray and vLLM print (``controlplane.runlog``)."""
        return self.root / "logs"

    @property
    def policies_dir(self) -> Path:
        return self.root / "policies"

    @property
    def database_path(self) -> Path:
        return self.root / "autopilot.db"

    @property
    def anchors_path(self) -> Path:
        """The audit chain's head, appended after each promotion and rollback (``store.anchors``):
        outside the database, checked by ``autopilot audit verify``."""
        return self.root / "audit" / "anchors.jsonl"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def exists(self) -> bool:
        return self.settings_path.is_file()

    def settings(self) -> Settings:
        if not self.settings_path.is_file():
            return Settings()
        return load_yaml_document(Settings, self.settings_path)

    def save_settings(self, settings: Settings) -> None:
        """Write ``autopilot.yaml``; ``$AUTOPILOT_STORE_URL`` is never written to it (a
        ``store_url`` equal to it keeps what the file held)."""
        env_url = os.environ.get(ENV_STORE_URL, "").strip()
        if env_url and settings.store_url == env_url:
            on_disk = self.settings().store_url if self.settings_path.is_file() else None
            settings = settings.model_copy(
                update={"store_url": None if on_disk == env_url else on_disk})
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings_path.write_text(dump_yaml(settings), encoding="utf-8")

    def store_url(self) -> str:
        """``$AUTOPILOT_STORE_URL``, else ``store_url`` of ``autopilot.yaml``, else the SQLite
        file in this directory. Print it only through ``display_url``."""
        return (os.environ.get(ENV_STORE_URL, "").strip() or self.settings().store_url
                or f"sqlite:///{self.database_path}")

    def display_store_url(self) -> str:
        """The store URL with any password masked (what logs and tables may show)."""
        return display_url(self.store_url())


def display_url(url: str) -> str:
    """A database URL with its password masked, as the store prints it in its errors."""
    from store import display_url as masked

    return masked(url)


def resolve_state_dir(explicit: str | os.PathLike[str] | None = None) -> StateDir:
    """``--state-dir`` beats ``$AUTOPILOT_HOME`` beats ``~/.autopilot``."""
    raw = explicit or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR
    return StateDir(Path(raw).expanduser().resolve())
