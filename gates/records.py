"""What a gate run observed, recorded as frozen values; the gates decide on these alone.

Wall-clock figures (latencies) are kept apart from everything else because they are the
only observations that differ when the same gate runs again on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "AttemptRecord",
    "CacheCheck",
    "CaseRun",
    "FileCheck",
    "ProbeCall",
    "ProbeResult",
    "SuiteRun",
    "output_hash",
]

CaseStatus = Literal["pass", "fail", "error", "refused"]


def output_hash(texts: tuple[str, ...] | list[str]) -> str:
    """sha256 of the JSON list of a case's attempt outputs (byte-exact, order kept)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    text: str
    tier: str
    variant: str | None
    adapter: str | None
    input_tokens: int
    output_tokens: int
    latency_ms: float
    cache: str
    cost_usd: float
    check: str  # pass | fail | error
    reason: str


@dataclass(frozen=True)
class CaseRun:
    """One suite case run as a task: attempts until the verifier passes or the policy's
    attempts run out. ``status`` is ``error`` when no verdict could be reached (the serving
    path failed, a check was killed); ``refused`` when a guardrail refused an attempt."""

    case_id: str
    status: CaseStatus
    reason: str
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(a.text for a in self.attempts)

    @property
    def output_hash(self) -> str:
        return output_hash(self.texts)

    @property
    def tokens(self) -> int:
        return sum(a.input_tokens + a.output_tokens for a in self.attempts)

    @property
    def latency_ms(self) -> float:
        return sum(a.latency_ms for a in self.attempts)


@dataclass(frozen=True)
class SuiteRun:
    """A pass of the suite under one policy. ``case_ids`` is what should have run."""

    label: str
    policy_version: int
    policy_hash: str
    case_ids: tuple[str, ...]
    cases: tuple[CaseRun, ...]

    def by_id(self) -> dict[str, CaseRun]:
        return {c.case_id: c for c in self.cases}

    @property
    def missing(self) -> list[str]:
        done = self.by_id()
        return [i for i in self.case_ids if i not in done]

    @property
    def errors(self) -> list[CaseRun]:
        return [c for c in self.cases if c.status == "error"]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.errors

    def problem(self) -> str | None:
        """Why this run cannot support a decision, or None when it is complete."""
        if self.missing:
            return (f"{self.label} run is partial: {len(self.missing)}/{len(self.case_ids)} "
                    f"cases did not run (first: {self.missing[0]})")
        if self.errors:
            first = self.errors[0]
            return (f"{self.label} run has {len(self.errors)}/{len(self.case_ids)} cases "
                    f"without a verdict (first: case {first.case_id}: {first.reason})")
        return None


@dataclass(frozen=True)
class CacheCheck:
    """One sampled case: a fresh generation, then calls allowed to use the response cache.

    ``served`` holds ``(cache status, text)`` of each cache-allowed call in order.
    """

    case_id: str
    family: str
    fresh_text: str
    served: tuple[tuple[str, str], ...]
    family_excluded: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ProbeCall:
    attempt: int
    outcome: Literal["served", "refused", "error"]
    code: str | None = None
    message: str = ""
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class ProbeResult:
    """Calls built to exceed one guardrail cap (``cap`` names it, ``limit`` is its value)."""

    cap: str
    limit: float
    calls: tuple[ProbeCall, ...] = field(default_factory=tuple)
    error: str | None = None
    skipped: str | None = None  # why the cap could not be driven past within the call budget


@dataclass(frozen=True)
class FileCheck:
    """One pinned file of the candidate: the manifest's sha256 and the one on disk."""

    tier: str
    variant: str
    adapter: str | None
    path: str
    expected: str | None  # None: nothing pinned (no pins at all, or an extra file)
    actual: str | None  # None: the file is missing
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None
