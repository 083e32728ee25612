"""The fleet manifest: which tiers exist, their pinned weights, and the economics that price them.

Tiers are data: any number, ordered by ``rank`` (cheap to expensive). Cost per token comes
from here unless a span carries an explicit cost (see ``economics.costmodel``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from contracts.documents import DocumentError, Strict, content_hash, dump_yaml, load_yaml_document
from contracts.files import atomic_write_text

__all__ = [
    "Adapter",
    "CapacityType",
    "Economics",
    "FleetManifest",
    "FleetSpec",
    "Tier",
    "Variant",
    "load_fleet",
    "resolve_path",
    "save_fleet",
    "sha256_file",
    "verify_files",
]

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class CapacityType(StrEnum):
    ON_DEMAND = "on_demand"
    RESERVED = "reserved"
    SPOT = "spot"


class Economics(Strict):
    """How a variant is priced: the GPUs one replica holds and what they achieve.

    $/input token = gpus * usd_per_gpu_hour / 3600 / prefill_tokens_per_s, and likewise for
    output tokens with the decode rate. Where only a blended effective rate is known (as in
    the practice's tier table), give both rates that value.
    """

    gpus: float = Field(gt=0, description="GPUs one replica holds")
    usd_per_gpu_hour: float = Field(gt=0)
    prefill_tokens_per_s: float = Field(gt=0, description="effective input tokens/s per replica")
    decode_tokens_per_s: float = Field(gt=0, description="effective output tokens/s per replica")
    replicas: int = Field(default=1, ge=0, description="replicas provisioned (reservation view)")
    capacity_type: CapacityType = CapacityType.ON_DEMAND

    @property
    def usd_per_input_token(self) -> float:
        return self.gpus * self.usd_per_gpu_hour / 3600.0 / self.prefill_tokens_per_s

    @property
    def usd_per_output_token(self) -> float:
        return self.gpus * self.usd_per_gpu_hour / 3600.0 / self.decode_tokens_per_s

    @property
    def usd_per_hour(self) -> float:
        """Provisioned cost of all replicas for one hour."""
        return self.replicas * self.gpus * self.usd_per_gpu_hour


class Adapter(Strict):
    """A LoRA adapter for one variant, pinned by the sha256 of every file."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    files: dict[str, str] = Field(default_factory=dict, description="relative file -> sha256")
    family: str | None = Field(default=None, description="task family it was distilled for")

    _check_hashes = field_validator("files")(lambda cls, v: _check_sha_map(v))


class Variant(Strict):
    """One servable form of a tier's model (bf16, int8, int4 ...), pinned by hash."""

    name: str = Field(min_length=1)
    weights: str = Field(min_length=1, description="directory of the weights, or a model id")
    files: dict[str, str] = Field(default_factory=dict, description="relative file -> sha256")
    economics: Economics
    adapters: tuple[Adapter, ...] = ()

    _check_hashes = field_validator("files")(lambda cls, v: _check_sha_map(v))

    @model_validator(mode="after")
    def _unique_adapters(self) -> Variant:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique (duplicated: {', '.join(dupes)})")
        return self

    def adapter(self, name: str) -> Adapter:
        for a in self.adapters:
            if a.name == name:
                return a
        raise KeyError(f"variant {self.name!r} has no adapter {name!r}")


class Tier(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    rank: int = Field(ge=0, description="order from cheap (low) to expensive (high)")
    model: str = Field(min_length=1)
    stands_in_for: str | None = Field(
        default=None, description="the real model class whose economics this tier carries"
    )
    default_variant: str | None = None
    variants: tuple[Variant, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_variants(self) -> Tier:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique (duplicated: {', '.join(dupes)})")
        if self.default_variant is not None and self.default_variant not in names:
            raise ValueError(
                f"default_variant {self.default_variant!r} is not one of its variants {names}"
            )
        return self

    def variant(self, name: str | None = None) -> Variant:
        wanted = name or self.default_variant or self.variants[0].name
        for v in self.variants:
            if v.name == wanted:
                return v
        raise KeyError(f"tier {self.name!r} has no variant {wanted!r}")


class Pricing(Strict):
    cached_input_discount: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="share of the input price saved on prefix-cached tokens (0.9: pay 10%)",
    )
    response_cache_usd_per_call: float = Field(
        default=0.0, ge=0, description="cost of serving one call from the response cache"
    )


class FleetSpec(Strict):
    pricing: Pricing = Pricing()
    tiers: tuple[Tier, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_tiers(self) -> FleetSpec:
        names = [t.name for t in self.tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique (duplicated: {', '.join(dupes)})")
        ranks = [t.rank for t in self.tiers]
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"tier ranks must be distinct (got {ranks})")
        return self


class FleetMetadata(Strict):
    name: str = "fleet"
    created: datetime | None = None
    description: str | None = None


class FleetManifest(Strict):
    api_version: Literal["autopilot/v1"] = Field(default="autopilot/v1", alias="apiVersion")
    kind: Literal["FleetManifest"] = "FleetManifest"
    metadata: FleetMetadata = FleetMetadata()
    spec: FleetSpec

    @cached_property
    def content_hash(self) -> str:
        return content_hash(self.spec.model_dump(mode="json"))

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """Tiers ordered by rank, cheap first."""
        return tuple(sorted(self.spec.tiers, key=lambda t: t.rank))

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def tier(self, name: str) -> Tier:
        for t in self.spec.tiers:
            if t.name == name:
                return t
        raise KeyError(f"fleet has no tier {name!r} (tiers: {', '.join(self.tier_names)})")

    def economics(self, tier: str, variant: str | None = None) -> Economics:
        return self.tier(tier).variant(variant).economics


def _check_sha_map(files: dict[str, str]) -> dict[str, str]:
    import re

    for name, digest in files.items():
        if not re.match(SHA256_PATTERN, digest or ""):
            raise ValueError(f"file {name!r}: sha256 must be 64 lowercase hex digits (got {digest!r})")
    return files


def load_fleet(path_or_text: str | Path) -> FleetManifest:
    return load_yaml_document(FleetManifest, path_or_text)


def save_fleet(manifest: FleetManifest, path: str | Path) -> Path:
    return atomic_write_text(path, dump_yaml(manifest))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_path(path: str | Path, base_dir: str | Path) -> Path:
    """A weights or adapter path of the manifest: relative paths resolve against the
    directory that holds the manifest file, so a fleet folder can move as a whole."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base_dir) / p).resolve()


def verify_files(root: str | Path, files: dict[str, str]) -> list[tuple[str, str]]:
    """Check every pinned file under ``root``. Returns ``(file, problem)`` for each mismatch."""
    root = Path(root)
    problems: list[tuple[str, str]] = []
    for rel, expected in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            problems.append((str(p), "missing"))
            continue
        actual = sha256_file(p)
        if actual != expected:
            problems.append((str(p), f"sha256 {actual[:12]}... != manifest {expected[:12]}..."))
    return problems


# Re-exported so callers catch one error type for every refused document.
DocumentError = DocumentError
