"""The Policy document: what the autopilot may change, one section per lever.

A policy is an immutable value. Its content hash is the sha256 of the canonical JSON of
``spec`` and is computed, never written by hand; a change makes a new version whose
``metadata.parent_version`` names the one it came from. How ``spec.routing`` turns a task
into the tiers it tries is in ``policies.routing`` and ``docs/policy.md``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.documents import (
    DocumentError,
    Strict,
    content_hash,
    diff_values,
    dump_yaml,
    load_yaml_document,
)
from contracts.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from contracts.manifest import FleetManifest

__all__ = [
    "CacheSpec",
    "DistillationTarget",
    "DocumentError",
    "GateLimits",
    "GuardrailSpec",
    "Policy",
    "PolicyMetadata",
    "PolicySpec",
    "ResponseCacheSpec",
    "RoutingOverride",
    "RoutingSpec",
    "TeamBudget",
    "describe_diff",
    "load_policy",
    "policy_diff",
    "save_policy",
    "validate_against_fleet",
]


def _ascending(values: list[float]) -> list[float]:
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"thresholds must be strictly ascending (got {values})")
    return values


def _unique(values: list[str], what: str) -> list[str]:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} must not repeat a tier (repeated: {', '.join(dupes)})")
    return values


class RoutingOverride(Strict):
    """Per-family routing; any field left out falls back to the policy-wide value."""

    escalation: list[str] | None = Field(default=None, min_length=1)
    weights: dict[str, float] | None = None
    bias: float | None = None
    thresholds: list[float] | None = None
    attempts_per_tier: int | None = Field(default=None, ge=1)
    max_attempts: int | None = Field(default=None, ge=1)
    shadow_rate: float | None = Field(default=None, ge=0, le=1)
    shadow_adapters: dict[str, str] | None = Field(
        default=None,
        description="tier -> an adapter the family's shadows on that tier run with (one the "
                    "policy does not serve there: what exploration buys for a distillation); "
                    "a tier named here may be shadowed beside a first attempt on itself",
    )

    _asc = field_validator("thresholds")(lambda cls, v: v if v is None else _ascending(v))
    _uniq = field_validator("escalation")(
        lambda cls, v: v if v is None else _unique(v, "escalation")
    )

    @model_serializer(mode="wrap")
    def _omit_unset_shadow_rate(self, handler: Any) -> Any:
        # Added after policies were stored: left out when unset, so their hashes hold.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("shadow_rate", "shadow_adapters"):
                if data.get(name) is None:
                    data.pop(name, None)
        return data


class RoutingSpec(Strict):
    """Which tier each attempt of a task uses (see docs/policy.md for the exact algorithm)."""

    router: Literal["score", "fixed"] = Field(
        default="score",
        description="score: start tier from a linear difficulty score; fixed: always start at "
        "escalation[0]",
    )
    escalation: list[str] = Field(min_length=1, description="tiers in escalation order")
    weights: dict[str, float] = Field(
        default_factory=dict, description="numeric task feature -> weight in the score"
    )
    bias: float = 0.0
    thresholds: list[float] = Field(
        default_factory=list,
        description="ascending cut points; score < thresholds[i] starts at escalation[i]",
    )
    attempts_per_tier: int = Field(default=1, ge=1, description="tries on a tier before moving up")
    max_attempts: int = Field(default=3, ge=1)
    exploration_rate: float = Field(
        default=0.0, ge=0, le=0.5, description="share of first attempts sent to a uniform tier"
    )
    shadow_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of tasks also run on one other tier as shadow"
    )
    shadow_tiers: list[str] = Field(
        default_factory=list,
        description="tiers a shadow may run on (empty: any other tier of the escalation order)",
    )
    shadow_variants: dict[str, str] = Field(
        default_factory=dict,
        description="tier -> the variant its shadows run on (default: the policy's own "
                    "variant of the tier); a tier named here may be shadowed beside a first "
                    "attempt on that very tier, to show a variant the policy does not serve",
    )
    families: dict[str, RoutingOverride] = Field(default_factory=dict)

    _asc = field_validator("thresholds")(lambda cls, v: _ascending(v))
    _uniq = field_validator("escalation")(lambda cls, v: _unique(v, "escalation"))
    _uniq_shadow = field_validator("shadow_tiers")(lambda cls, v: _unique(v, "shadow_tiers"))

    @model_serializer(mode="wrap")
    def _omit_unset_shadow_tiers(self, handler: Any) -> Any:
        # Added after policies were stored: left out when empty, so their hashes hold.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("shadow_tiers", "shadow_variants"):
                if not data.get(name):
                    data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _check_thresholds(self) -> RoutingSpec:
        for fam, o in [("", None), *self.families.items()]:
            esc = (o.escalation if o and o.escalation is not None else None) or self.escalation
            th = o.thresholds if o and o.thresholds is not None else self.thresholds
            if th and len(th) != len(esc) - 1:
                where = f"families.{fam}." if fam else ""
                raise ValueError(
                    f"{where}thresholds needs {len(esc) - 1} cut points for "
                    f"{len(esc)} escalation tiers (got {len(th)})"
                )
        return self


class ResponseCacheSpec(Strict):
    enabled: bool = False
    mode: Literal["exact", "similarity"] = "exact"
    similarity_threshold: float = Field(default=0.95, gt=0, le=1)
    ttl_s: int = Field(default=86_400, ge=1)
    max_entries: int = Field(default=100_000, ge=1)
    exclude_families: list[str] = Field(
        default_factory=list, description="families the response cache must never serve"
    )


class CacheSpec(Strict):
    prefix: dict[str, bool] = Field(
        default_factory=dict, description="tier -> prefix (KV) caching on; absent means off"
    )
    response: ResponseCacheSpec = ResponseCacheSpec()


class DistillationTarget(Strict):
    tier: str = Field(min_length=1)
    adapter: str = Field(min_length=1)


class TeamBudget(Strict):
    usd_per_day: float = Field(gt=0)
    alert_levels: list[float] = Field(default_factory=lambda: [0.7, 0.9, 1.0])
    hard_stop: bool = Field(default=True, description="refuse new tasks at 100%")

    _asc = field_validator("alert_levels")(lambda cls, v: _ascending(v))


class GuardrailSpec(Strict):
    max_tokens_per_task: int | None = Field(default=None, ge=1)
    max_attempts_per_task: int | None = Field(default=None, ge=1)
    max_usd_per_task: float | None = Field(default=None, gt=0)
    team_budgets: dict[str, TeamBudget] = Field(default_factory=dict)


class GateLimits(Strict):
    """Limits the cost-and-latency and non-inferiority gates hold a candidate to.

    ``non_inferiority_margin`` is the relative drop of Green PRs (and of the gates' pass
    rate) a candidate may show. First-pass yield has its own ``fpy_margin`` (an absolute
    drop): None, the default, means FPY is reported and never constrains, since a
    cheap-first cascade lowers FPY by construction while raising Green PRs and cutting
    cost per Green PR. Left unset it is not written into the spec, so the content hash of
    every policy that does not set it is what it was before the field existed.
    """

    p95_latency_ms: float | None = Field(default=None, gt=0)
    max_tokens_per_case: float | None = Field(default=None, gt=0)
    non_inferiority_margin: float = Field(
        default=0.02, ge=0, le=0.5, description="tolerated relative drop of Green PRs")
    fpy_margin: float | None = Field(
        default=None, ge=0, le=1,
        description="tolerated absolute drop of first-pass yield; None: reported, never "
        "constrains")
    max_cache_false_hit_rate: float = Field(default=0.01, ge=0, le=1)

    @model_serializer(mode="wrap")
    def _omit_unset_fpy_margin(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("fpy_margin") is None:
            data.pop("fpy_margin", None)
        return data


class PolicySpec(Strict):
    routing: RoutingSpec
    quantization: dict[str, str] = Field(
        default_factory=dict, description="tier -> variant; absent means the tier's default"
    )
    cache: CacheSpec = CacheSpec()
    distillation: dict[str, DistillationTarget] = Field(
        default_factory=dict, description="family -> tier + adapter"
    )
    guardrails: GuardrailSpec = GuardrailSpec()
    gates: GateLimits = GateLimits()


#: The largest policy version the store can hold (its version columns are SQL INTEGER, whose
#: range on PostgreSQL ends here); a larger one is refused when the document is validated.
MAX_POLICY_VERSION = 2**31 - 1


class PolicyMetadata(Strict):
    version: int = Field(ge=1, le=MAX_POLICY_VERSION)
    parent_version: int | None = Field(default=None, ge=1, le=MAX_POLICY_VERSION)
    author: str = Field(min_length=1)
    created: datetime
    description: str | None = None

    @model_validator(mode="after")
    def _parent_before(self) -> PolicyMetadata:
        if self.parent_version is not None and self.parent_version >= self.version:
            raise ValueError(
                f"parent_version {self.parent_version} must be older than version {self.version}"
            )
        return self


class Policy(Strict):
    api_version: Literal["autopilot/v1"] = Field(default="autopilot/v1", alias="apiVersion")
    kind: Literal["Policy"] = "Policy"
    metadata: PolicyMetadata
    spec: PolicySpec

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of ``spec``: metadata never changes the hash."""
        return content_hash(self.spec_json())

    def spec_json(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")

    def to_yaml(self) -> str:
        return dump_yaml(self)

    def evolve(self, *, author: str, description: str | None = None, **spec_changes: Any) -> Policy:
        """A new version with ``spec`` sections replaced (``routing=...``); validated again."""
        spec = self.spec.model_dump(mode="json")
        for key, value in spec_changes.items():
            spec[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        return Policy.model_validate(
            {
                "apiVersion": self.api_version,
                "kind": self.kind,
                "metadata": {
                    "version": self.metadata.version + 1,
                    "parent_version": self.metadata.version,
                    "author": author,
                    "created": datetime.now(UTC),
                    "description": description,
                },
                "spec": spec,
            }
        )


def load_policy(path_or_text: str | Path) -> Policy:
    return load_yaml_document(Policy, path_or_text)


def save_policy(policy: Policy, path: str | Path) -> Path:
    return atomic_write_text(path, policy.to_yaml())


def policy_diff(old: Policy, new: Policy) -> list[tuple[str, Any, Any]]:
    """Leaf changes of ``spec`` as ``(path, old, new)``; empty when the hashes are equal."""
    if old.content_hash == new.content_hash:
        return []
    return [(f"spec.{p}", a, b) for p, a, b in diff_values(old.spec_json(), new.spec_json())]


def describe_diff(old: Policy, new: Policy) -> list[str]:
    """The diff in words, one line a change, for people and change reports."""
    lines = []
    for path, a, b in policy_diff(old, new):
        if a is None:
            lines.append(f"{path}: set to {_fmt(b)}")
        elif b is None:
            lines.append(f"{path}: removed (was {_fmt(a)})")
        else:
            lines.append(f"{path}: {_fmt(a)} -> {_fmt(b)}")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def validate_against_fleet(policy: Policy, fleet: FleetManifest) -> None:
    """Refuse a policy that names tiers, variants or adapters the fleet does not have."""
    problems: list[tuple[str, str]] = []
    tiers = {t.name: t for t in fleet.spec.tiers}

    def tier_ok(path: str, name: str) -> bool:
        if name not in tiers:
            problems.append((path, f"unknown tier {name!r} (fleet tiers: {', '.join(tiers)})"))
            return False
        return True

    r = policy.spec.routing
    for i, name in enumerate(r.escalation):
        tier_ok(f"spec.routing.escalation.{i}", name)
    for fam, o in r.families.items():
        for i, name in enumerate(o.escalation or []):
            tier_ok(f"spec.routing.families.{fam}.escalation.{i}", name)
    for i, name in enumerate(r.shadow_tiers):
        tier_ok(f"spec.routing.shadow_tiers.{i}", name)
    for tier, variant in r.shadow_variants.items():
        path = f"spec.routing.shadow_variants.{tier}"
        if tier_ok(path, tier):
            names = [v.name for v in tiers[tier].variants]
            served = tiers[tier].variant(policy.spec.quantization.get(tier)).name
            if variant not in names:
                problems.append((path, f"unknown variant {variant!r} (has: {names})"))
            elif variant == served:
                problems.append((path, (f"{variant!r} is the variant the policy serves on "
                                        f"{tier}: a shadow of it shows nothing new")))
    for fam, o in r.families.items():
        for tier, adapter in (o.shadow_adapters or {}).items():
            path = f"spec.routing.families.{fam}.shadow_adapters.{tier}"
            if not tier_ok(path, tier):
                continue
            variant = tiers[tier].variant(r.shadow_variants.get(tier)
                                          or policy.spec.quantization.get(tier))
            served = policy.spec.distillation.get(fam)
            if adapter not in [a.name for a in variant.adapters]:
                problems.append((path, (f"tier {tier} variant {variant.name} has no adapter "
                                        f"{adapter!r}")))
            elif served is not None and (served.tier, served.adapter) == (tier, adapter):
                problems.append((path, (f"{adapter!r} is the adapter the policy serves for "
                                        f"{fam} on {tier}: a shadow of it shows nothing new")))
    for tier, variant in policy.spec.quantization.items():
        if tier_ok(f"spec.quantization.{tier}", tier):
            names = [v.name for v in tiers[tier].variants]
            if variant not in names:
                problems.append(
                    (f"spec.quantization.{tier}", f"unknown variant {variant!r} (has: {names})")
                )
    for tier in policy.spec.cache.prefix:
        tier_ok(f"spec.cache.prefix.{tier}", tier)
    for fam, d in policy.spec.distillation.items():
        path = f"spec.distillation.{fam}"
        if tier_ok(f"{path}.tier", d.tier):
            variant = tiers[d.tier].variant(policy.spec.quantization.get(d.tier))
            if d.adapter not in [a.name for a in variant.adapters]:
                problems.append(
                    (f"{path}.adapter", (f"tier {d.tier} variant {variant.name} has no "
                                         f"adapter {d.adapter!r}"))
                )
    if problems:
        raise DocumentError(f"policy v{policy.metadata.version}", problems)
