"""Helpers for the gate tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from contracts.manifest import (
    Adapter,
    Economics,
    FleetManifest,
    FleetSpec,
    Tier,
    Variant,
    save_fleet,
    sha256_file,
)
from gates.suite import ReferenceVerifier, Suite, SuiteCase, SuiteMetadata
from policies.policy import Policy

ECON = Economics(gpus=1, usd_per_gpu_hour=2.5, prefill_tokens_per_s=6000,
                 decode_tokens_per_s=6000)


def write_fleet(root: Path) -> Path:
    """Tiers S, M, L with variants bf16 and int4 (files pinned by real sha256), and one
    adapter ``list-v1`` on S/bf16."""
    tiers = []
    for rank, tier in enumerate(("S", "M", "L")):
        variants = []
        for variant in ("bf16", "int4"):
            rel = Path("models") / tier / variant
            files = {}
            for name in ("config.json", "model.safetensors"):
                path = root / rel / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{tier}/{variant}/{name}")
                files[name] = sha256_file(path)
            adapters = ()
            if tier == "S" and variant == "bf16":
                apath = root / "adapters" / "list-v1" / "adapter.safetensors"
                apath.parent.mkdir(parents=True, exist_ok=True)
                apath.write_text("lora")
                adapters = (Adapter(name="list-v1", path="adapters/list-v1",
                                    files={"adapter.safetensors": sha256_file(apath)}),)
            variants.append(Variant(name=variant, weights=rel.as_posix(), files=files,
                                    economics=ECON, adapters=adapters))
        tiers.append(Tier(name=tier, rank=rank, model=f"m-{tier}", default_variant="bf16",
                          variants=tuple(variants)))
    return save_fleet(FleetManifest(spec=FleetSpec(tiers=tuple(tiers))), root / "fleet.yaml")


def make_policy(version: int = 1, **spec_changes) -> Policy:
    spec = {
        "routing": {"router": "fixed", "escalation": ["S", "M", "L"], "max_attempts": 3},
        "guardrails": {"max_attempts_per_task": 5},
        "gates": {"non_inferiority_margin": 0.05},
    }
    spec.update(spec_changes)
    return Policy.model_validate({
        "metadata": {"version": version, "parent_version": version - 1 if version > 1 else None,
                     "author": "test", "created": "2026-11-01T00:00:00Z"},
        "spec": spec,
    })


def tiny_suite(n: int = 3) -> Suite:
    cases = tuple(
        SuiteCase(id=f"c{i}", family="expr_eval", difficulty=1, prompt=f"eval: {i}+1\n=",
                  expected=str(i + 1), verifier=ReferenceVerifier(spec="int"),
                  features={"difficulty": 1})
        for i in range(n))
    return Suite(metadata=SuiteMetadata(name="tiny"), cases=cases)


def competent(case, tier, variant, attempt) -> str:
    """S solves difficulty 1, M up to 2, L everything; int4 variants fail difficulty >= 2."""
    level = {"S": 1, "M": 2, "L": 3}[tier]
    if variant == "int4" and case.difficulty >= 2:
        return "0"
    return case.expected if case.difficulty <= level else "0"
