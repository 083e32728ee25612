"""Helpers for the gate tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

from gates.suite import ReferenceVerifier, Suite, SuiteCase, SuiteMetadata
from policies.policy import Policy
from serving.testing import make_stub_fleet


def write_fleet(root: Path) -> Path:
    """Tiers S, M, L with variants bf16 and int4 (placeholder files pinned by real sha256),
    and one adapter ``list-v1`` on S/bf16 (``serving.testing.make_stub_fleet``)."""
    return make_stub_fleet(root, ("S", "M", "L"), ("bf16", "int4"), adapters={"S": ["list-v1"]})


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
