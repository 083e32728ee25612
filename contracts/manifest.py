"""The fleet manifest: which tiers exist, their pinned weights, and the economics that price them.

Tiers are data: any number, ordered by ``rank`` (cheap to expensive). Cost per token comes
from here unless a span carries an explicit cost (see ``economics.costmodel``).

Pins are exact: a self-hosted variant's weights directory, and each adapter's directory,
hold exactly the files the manifest pins, each with its sha256. A file there that the
manifest does not name (an unlisted ``model.safetensors.index.json`` pointing at an
unlisted shard, a ``chat_template.jinja``, a README) is a problem like a wrong hash, since
the engine loads the whole directory (``pin_problems``, ``check_fleet_pins``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from contracts.documents import DocumentError, Strict, content_hash, dump_yaml, load_yaml_document
from contracts.files import atomic_write_text

__all__ = [
    "API_FIELDS",
    "EXTRA_FILE",
    "SELF_HOSTED_FIELDS",
    "Adapter",
    "CapacityType",
    "DocumentError",
    "Economics",
    "FleetManifest",
    "FleetSpec",
    "PinProblem",
    "PinReport",
    "Tier",
    "Variant",
    "check_fleet_pins",
    "load_fleet",
    "pin_problems",
    "resolve_path",
    "save_fleet",
    "sha256_file",
    "unpinned_files",
    "verify_files",
]

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class CapacityType(StrEnum):
    ON_DEMAND = "on_demand"
    RESERVED = "reserved"
    SPOT = "spot"


# Field names of the two economics forms (a variant has one or the other).
SELF_HOSTED_FIELDS = ("gpus", "usd_per_gpu_hour", "prefill_tokens_per_s", "decode_tokens_per_s")
API_TOKEN_FIELDS = ("usd_per_1m_input_tokens", "usd_per_1m_cached_input_tokens",
                    "usd_per_1m_output_tokens")
API_FIELDS = (*API_TOKEN_FIELDS, "usd_per_request")


class Economics(Strict):
    """How a variant is priced: one of two forms, never both.

    **Self-hosted** (``gpus``, ``usd_per_gpu_hour``, ``prefill_tokens_per_s``,
    ``decode_tokens_per_s``; ``replicas``, ``capacity_type``): the GPUs one replica holds and
    what they achieve. $/input token = gpus * usd_per_gpu_hour / 3600 / prefill_tokens_per_s,
    and likewise for output tokens with the decode rate. Where only a blended effective rate
    is known (as in the practice's tier table), give both rates that value. Prefix-cached
    input tokens pay the input price less the fleet's ``pricing.cached_input_discount``.

    **API-priced** (a model bought per token or per request): ``usd_per_1m_input_tokens``
    and ``usd_per_1m_output_tokens`` (both, or neither), optionally
    ``usd_per_1m_cached_input_tokens`` (absent: the input price less the fleet's
    ``cached_input_discount``), and/or ``usd_per_request`` (paid per call, on top of any
    token prices). An API-priced variant holds no GPUs and no replicas; it has no weights to
    pin, and the local engine cannot serve it.
    """

    # self-hosted form
    gpus: float | None = Field(default=None, gt=0, description="GPUs one replica holds")
    usd_per_gpu_hour: float | None = Field(default=None, gt=0)
    prefill_tokens_per_s: float | None = Field(
        default=None, gt=0, description="effective input tokens/s per replica")
    decode_tokens_per_s: float | None = Field(
        default=None, gt=0, description="effective output tokens/s per replica")
    replicas: int = Field(default=1, ge=0, description="replicas provisioned (reservation view)")
    capacity_type: CapacityType = CapacityType.ON_DEMAND
    # API-priced form
    usd_per_1m_input_tokens: float | None = Field(default=None, ge=0)
    usd_per_1m_cached_input_tokens: float | None = Field(
        default=None, ge=0, description="prefix-cached input tokens (absent: input less discount)")
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0)
    usd_per_request: float | None = Field(default=None, ge=0, description="paid per call")

    @model_validator(mode="after")
    def _one_form(self) -> Economics:
        hosted = [f for f in SELF_HOSTED_FIELDS if getattr(self, f) is not None]
        api = [f for f in API_FIELDS if getattr(self, f) is not None]
        if hosted and api:
            raise ValueError(
                f"a variant is priced self-hosted or API-priced, not both: got the self-hosted "
                f"{', '.join(hosted)} and the API-priced {', '.join(api)}")
        if not hosted and not api:
            raise ValueError(
                "no prices: give the self-hosted form (" + ", ".join(SELF_HOSTED_FIELDS)
                + ") or the API-priced form (usd_per_1m_input_tokens and "
                "usd_per_1m_output_tokens, optionally usd_per_1m_cached_input_tokens; and/or "
                "usd_per_request)")
        if hosted:
            missing = [f for f in SELF_HOSTED_FIELDS if f not in hosted]
            if missing:
                raise ValueError(f"self-hosted economics (given: {', '.join(hosted)}) also need "
                                 f"{', '.join(missing)}")
            return self
        tokens = [f for f in API_TOKEN_FIELDS if f in api]
        for need in ("usd_per_1m_input_tokens", "usd_per_1m_output_tokens"):
            if tokens and need not in tokens:
                raise ValueError(f"{need} is missing: per-token API prices need both "
                                 f"usd_per_1m_input_tokens and usd_per_1m_output_tokens "
                                 f"(given: {', '.join(tokens)})")
        cached, full = self.usd_per_1m_cached_input_tokens, self.usd_per_1m_input_tokens
        if cached is not None and full is not None and cached > full:
            raise ValueError(f"usd_per_1m_cached_input_tokens ({cached}) exceeds "
                             f"usd_per_1m_input_tokens ({full})")
        for name in ("replicas", "capacity_type"):
            if name in self.model_fields_set:
                raise ValueError(f"{name}: an API-priced variant provisions no GPUs or replicas "
                                 "(remove it, or give the self-hosted form)")
        return self

    @model_serializer(mode="wrap")
    def _omit_other_form(self, handler):
        """Dump only the form in use (a self-hosted manifest hashes as it always did)."""
        data = handler(self)
        for name in (*SELF_HOSTED_FIELDS, *API_FIELDS):
            if data.get(name, 0) is None:
                del data[name]
        if self.api_priced:
            data.pop("replicas", None)
            data.pop("capacity_type", None)
        return data

    @property
    def api_priced(self) -> bool:
        """True for the API-priced form (list prices; no GPUs, no weights)."""
        return self.gpus is None

    @property
    def usd_per_input_token(self) -> float:
        if self.api_priced:
            return (self.usd_per_1m_input_tokens or 0.0) / 1e6
        return self.gpus * self.usd_per_gpu_hour / 3600.0 / self.prefill_tokens_per_s

    @property
    def usd_per_output_token(self) -> float:
        if self.api_priced:
            return (self.usd_per_1m_output_tokens or 0.0) / 1e6
        return self.gpus * self.usd_per_gpu_hour / 3600.0 / self.decode_tokens_per_s

    def usd_per_cached_input_token(self, cached_input_discount: float) -> float:
        """Price of one prefix-cached input token: an API tier's own cached price where it
        gives one, else the input price less the fleet's discount."""
        if self.usd_per_1m_cached_input_tokens is not None:
            return self.usd_per_1m_cached_input_tokens / 1e6
        return self.usd_per_input_token * (1.0 - cached_input_discount)

    @property
    def usd_per_call(self) -> float:
        """The per-request price (API-priced form); 0 for a self-hosted variant."""
        return self.usd_per_request or 0.0

    def call_usd(self, input_tokens: float, cached_input_tokens: float, output_tokens: float,
                 *, cached_input_discount: float) -> float:
        """What one call of these tokens costs (no response-cache hit, no explicit cost)."""
        cached = min(max(cached_input_tokens, 0.0), input_tokens)
        return ((input_tokens - cached) * self.usd_per_input_token
                + cached * self.usd_per_cached_input_token(cached_input_discount)
                + output_tokens * self.usd_per_output_token + self.usd_per_call)

    @property
    def seconds_per_input_token(self) -> float:
        """Busy replica-seconds per uncached input token (0: an API tier occupies no GPU)."""
        return 0.0 if self.api_priced else 1.0 / self.prefill_tokens_per_s

    @property
    def seconds_per_output_token(self) -> float:
        return 0.0 if self.api_priced else 1.0 / self.decode_tokens_per_s

    @property
    def gpus_per_replica(self) -> float:
        """GPUs one replica holds (0 for an API-priced variant)."""
        return 0.0 if self.api_priced else float(self.gpus)

    @property
    def provisioned_gpus(self) -> float:
        """GPUs all replicas hold (0 for an API-priced variant)."""
        return 0.0 if self.api_priced else self.replicas * self.gpus

    @property
    def usd_per_hour(self) -> float:
        """Provisioned cost of all replicas for one hour (0 for an API-priced variant)."""
        return 0.0 if self.api_priced else self.replicas * self.gpus * self.usd_per_gpu_hour


class Adapter(Strict):
    """A LoRA adapter for one variant, pinned by the sha256 of every file."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    files: dict[str, str] = Field(default_factory=dict, description="relative file -> sha256")
    family: str | None = Field(default=None, description="task family it was distilled for")

    _check_hashes = field_validator("files")(lambda cls, v: _check_sha_map(v))


class Variant(Strict):
    """One form of a tier's model: self-hosted (bf16, int8, int4 ... weights pinned by hash)
    or API-priced (no weights, no pins, no adapters; see ``Economics``)."""

    name: str = Field(min_length=1)
    weights: str | None = Field(
        default=None, min_length=1,
        description="directory of the weights, or a model id (absent for an API-priced variant)")
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

    @model_validator(mode="after")
    def _weights_match_the_form(self) -> Variant:
        if not self.economics.api_priced:
            if self.weights is None:
                raise ValueError(f"variant {self.name!r}: weights is required for a self-hosted "
                                 "variant (only an API-priced variant may omit it)")
            return self
        given = [f for f in ("weights", "files", "adapters") if getattr(self, f)]
        if given:
            raise ValueError(f"variant {self.name!r} is API-priced: it has no {', '.join(given)} "
                             "(nothing to pin or load; remove them, or give self-hosted "
                             "economics)")
        return self

    @property
    def api_priced(self) -> bool:
        """An API-priced variant: no weights to pin, not servable by the local engine."""
        return self.economics.api_priced

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


# The problem of a file in a pinned directory that the manifest does not pin.
EXTRA_FILE = "not pinned by the manifest: an extra file in a pinned directory"


@dataclass(frozen=True)
class PinProblem:
    """One problem with a pinned directory: ``kind`` is ``mismatch`` (the sha256 differs),
    ``missing`` (a pinned file is not there), ``extra`` (a file there is not pinned) or
    ``unpinned`` (the manifest pins nothing for it); ``path`` is the file or directory."""

    path: str
    kind: Literal["mismatch", "missing", "extra", "unpinned"]
    detail: str


def unpinned_files(root: str | Path, files: dict[str, str]) -> list[str]:
    """Everything under ``root`` that the pins ``files`` do not name, as relative POSIX paths,
    sorted: files at any depth, links (a link to a directory is not followed: the link is
    the extra entry) and special files; directories holding only pinned files are fine. A
    directory that cannot be listed is reported as an extra entry itself (what it holds is
    unknown). Empty when ``root`` is not a directory (its pinned files are then missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    pinned = {Path(rel).as_posix() for rel in files}
    extra: list[str] = []

    def unreadable(err: OSError) -> None:
        extra.append(Path(err.filename or root).relative_to(root).as_posix())

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        names = filenames + [d for d in dirnames if (here / d).is_symlink()]
        for name in names:
            rel = (here / name).relative_to(root).as_posix()
            if rel not in pinned:
                extra.append(rel)
    return sorted(set(extra))


def pin_problems(root: str | Path, files: dict[str, str], *, exact: bool = True
                 ) -> list[PinProblem]:
    """Check the directory ``root`` against its pins: every pinned file present with its
    sha256, and (``exact``) nothing else there."""
    root = Path(root)
    problems: list[PinProblem] = []
    for rel, expected in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            problems.append(PinProblem(str(p), "missing", "missing"))
            continue
        actual = sha256_file(p)
        if actual != expected:
            problems.append(PinProblem(
                str(p), "mismatch", f"sha256 {actual[:12]}... != manifest {expected[:12]}..."))
    if exact:
        problems += [PinProblem(str(root / rel), "extra", EXTRA_FILE)
                     for rel in unpinned_files(root, files)]
    return problems


def verify_files(root: str | Path, files: dict[str, str], *, exact: bool = True
                 ) -> list[tuple[str, str]]:
    """Check every pinned file under ``root`` and (``exact``) that nothing else is there.
    Returns ``(file, problem)`` for each missing, altered or extra file."""
    return [(p.path, p.detail) for p in pin_problems(root, files, exact=exact)]


@dataclass(frozen=True)
class PinReport:
    """The check of one variant's weights or one adapter (``adapter`` set) of a fleet. An
    API-priced variant has no weights: ``api_priced``, nothing checked, never a problem."""

    tier: str
    variant: str
    adapter: str | None
    directory: str | None
    pinned: int
    problems: tuple[PinProblem, ...] = ()
    api_priced: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def target(self) -> str:
        return f"{self.tier}/{self.variant}" + (f"+{self.adapter}" if self.adapter else "")


def check_fleet_pins(manifest: FleetManifest, manifest_dir: str | Path) -> list[PinReport]:
    """Every pin of the fleet: each self-hosted variant's weights directory and each of its
    adapters' directories hold exactly their pinned files with their sha256 (paths resolve
    against ``manifest_dir``); a variant or adapter that pins nothing is a problem."""
    reports: list[PinReport] = []

    def check(tier: str, variant: str, adapter: str | None, path: str,
              files: dict[str, str]) -> None:
        root = resolve_path(path, manifest_dir)
        problems = pin_problems(root, files)
        if not files:
            problems.insert(0, PinProblem(str(root), "unpinned",
                                          "the manifest pins no files here (nothing to verify)"))
        reports.append(PinReport(tier, variant, adapter, str(root), len(files), tuple(problems)))

    for tier in manifest.tiers:
        for variant in tier.variants:
            if variant.api_priced:
                reports.append(PinReport(tier.name, variant.name, None, None, 0,
                                         api_priced=True))
                continue
            check(tier.name, variant.name, None, variant.weights, dict(variant.files))
            for adapter in variant.adapters:
                check(tier.name, variant.name, adapter.name, adapter.path, dict(adapter.files))
    return reports

