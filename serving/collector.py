"""The distillation training set: verified outputs, collected opt-in, never from the gates.

The gateway knows what it answered (prompt, output, tier, variant, adapter); only the
caller's verifier knows whether the answer passed. So collection is two steps:

1. ``VerifiedCollector.remember`` keeps the gateway's own record of a served call, only for
   a family the settings opt in and the policy does not exclude, and only for ``serve`` or
   ``shadow`` calls (gate traffic is never kept);
2. ``VerifiedCollector.report`` is the harness saying "attempt k of task t passed"; the
   gateway then appends its own record (never text sent by the caller, so a client cannot
   inject training data) to ``<state>/distill/verified/<family>.jsonl`` with the sha256 of
   the prompt and of the output.

Leaks are refused twice: a prompt whose hash is a gate-suite case is never written
(``gate_prompt_hashes``), and ``load_training_set`` drops such prompts again on read.
Collection is off by default (``CollectorSpec.enabled``) and opt-in per family.

Pure parts: ``CollectorSpec``, ``collection_decision``, ``prompt_hash``; the adapter is the
JSON-lines store (``TrainingSetStore``) and the bounded in-memory ``VerifiedCollector``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from contracts.documents import Strict
from contracts.errors import PermanentError, TransientError

__all__ = [
    "CollectorSpec",
    "TrainingSetStore",
    "VerifiedCollector",
    "VerifiedExample",
    "collection_decision",
    "gate_prompt_hashes",
    "load_training_set",
    "prompt_hash",
    "training_set_dir",
]

COLLECTED_PURPOSES = frozenset({"serve", "shadow"})  # never "gate"


class CollectorSpec(Strict):
    """What the gateway may keep for distillation (``autopilot.yaml``: distillation.collect)."""

    enabled: bool = Field(default=False, description="master switch; off by default")
    families: list[str] = Field(
        default_factory=list, description="families opted in; empty: none is collected")
    exclude_families: list[str] = Field(
        default_factory=list,
        description="never collected, in addition to the policy's cache exclusions")
    max_records_per_family: int = Field(default=50_000, ge=1)
    max_pending: int = Field(
        default=50_000, ge=1, description="served calls held while waiting for a verdict")


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def collection_decision(spec: CollectorSpec, policy: Any, family: str | None,
                        purpose: str) -> tuple[bool, str]:
    """May a call of ``family`` with ``purpose`` be kept? (pure; the reason says why).

    Excluded: collection off, a family not opted in, a family the settings or the policy
    exclude (``spec.cache.response.exclude_families``: families whose data must not be
    reused), and gate traffic.
    """
    if not spec.enabled:
        return False, "collection is off"
    if purpose not in COLLECTED_PURPOSES:
        return False, f"{purpose} calls are never collected"
    if not family:
        return False, "the call names no task family"
    policy_excluded = list(policy.spec.cache.response.exclude_families) if policy else []
    if family in spec.exclude_families or family in policy_excluded:
        return False, f"family {family} is excluded from reuse"
    if family not in spec.families:
        return False, f"family {family} is not opted in"
    return True, "collected"


def gate_prompt_hashes(suites: Iterable[Any]) -> frozenset[str]:
    """sha256 of every gate-suite prompt. The caller names the suites (serving sits below
    the gates; the control plane passes the pinned reference suite)."""
    return frozenset(prompt_hash(case.prompt) for suite in suites for case in suite.cases)


@dataclass(frozen=True)
class VerifiedExample:
    """One training example: a prompt and the output a verifier passed."""

    family: str
    prompt: str
    output: str
    prompt_sha256: str
    output_sha256: str
    tier: str | None = None
    variant: str | None = None
    adapter: str | None = None
    source: str = "gateway"  # gateway | teacher
    task_id: str | None = None
    recorded_at: str | None = None

    @classmethod
    def make(cls, family: str, prompt: str, output: str, **extra: Any) -> VerifiedExample:
        return cls(family=family, prompt=prompt, output=output,
                   prompt_sha256=prompt_hash(prompt),
                   output_sha256=hashlib.sha256(output.encode("utf-8")).hexdigest(),
                   recorded_at=extra.pop("recorded_at", None)
                   or datetime.now(UTC).isoformat(timespec="seconds"), **extra)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def training_set_dir(state_root: str | Path) -> Path:
    return Path(state_root) / "distill" / "verified"


class TrainingSetStore:
    """Append-only JSON lines, one file per family, de-duplicated by prompt hash."""

    def __init__(self, directory: str | Path, *, blocked: frozenset[str] = frozenset(),
                 max_records_per_family: int = 50_000):
        self.directory = Path(directory)
        self.blocked = blocked
        self.max_records = max_records_per_family
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}

    def path(self, family: str) -> Path:
        if not family or "/" in family or family.startswith("."):
            raise PermanentError(f"family {family!r} is not a valid training-set name")
        return self.directory / f"{family}.jsonl"

    def _hashes(self, family: str) -> set[str]:
        if family not in self._seen:
            self._seen[family] = {e.prompt_sha256 for e in _read(self.path(family))}
        return self._seen[family]

    def add(self, example: VerifiedExample) -> tuple[bool, str]:
        """Append ``example``; False with the reason when refused or already held."""
        if example.prompt_sha256 != prompt_hash(example.prompt):
            return False, "prompt hash does not match the prompt"
        if example.prompt_sha256 in self.blocked:
            return False, "the prompt is a gate-suite case: never used for training"
        with self._lock:
            seen = self._hashes(example.family)
            if example.prompt_sha256 in seen:
                return False, "prompt already collected"
            if len(seen) >= self.max_records:
                return False, f"family {example.family} holds {self.max_records} records"
            path = self.path(example.family)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(example.as_dict(), sort_keys=True) + "\n")
            except OSError as exc:
                raise TransientError(f"could not append to {path}: {exc}") from exc
            seen.add(example.prompt_sha256)
        return True, "collected"

    def add_many(self, examples: Iterable[VerifiedExample]) -> int:
        return sum(1 for e in examples if self.add(e)[0])


def _read(path: Path) -> list[VerifiedExample]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(VerifiedExample(**json.loads(line)))
        except (TypeError, ValueError):
            continue  # a torn last line of a killed writer: skipped, never fatal
    return out


def load_training_set(directory: str | Path, family: str, *,
                      blocked: frozenset[str]) -> list[VerifiedExample]:
    """The family's verified examples, minus gate-suite prompts and hash mismatches."""
    kept = []
    for e in _read(Path(directory) / f"{family}.jsonl"):
        if e.family != family or e.prompt_sha256 != prompt_hash(e.prompt):
            continue
        if e.prompt_sha256 in blocked:
            continue
        kept.append(e)
    return kept


class VerifiedCollector:
    """The gateway's side: remember served calls, write the ones reported as passed."""

    def __init__(self, spec: CollectorSpec, store: TrainingSetStore):
        self.spec = spec
        self.store = store
        self._pending: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    @classmethod
    def for_state(cls, spec: CollectorSpec, state_root: str | Path,
                  blocked: frozenset[str]) -> VerifiedCollector:
        return cls(spec, TrainingSetStore(training_set_dir(state_root), blocked=blocked,
                                          max_records_per_family=spec.max_records_per_family))

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def remember(self, policy: Any, *, task_id: str, attempt: int, family: str | None,
                 purpose: str, prompt: str, text: str, tier: str, variant: str,
                 adapter: str | None) -> bool:
        ok, _reason = collection_decision(self.spec, policy, family, purpose)
        if not ok:
            return False  # an excluded family's text is never even held in memory
        with self._lock:
            self._pending[(task_id, attempt)] = {
                "family": family, "prompt": prompt, "output": text, "tier": tier,
                "variant": variant, "adapter": adapter, "task_id": task_id}
            while len(self._pending) > self.spec.max_pending:
                self._pending.popitem(last=False)
        return True

    def report(self, task_id: str, attempt: int, passed: bool) -> dict[str, Any]:
        """The harness's verdict on one attempt; writes the gateway's record if it passed."""
        with self._lock:
            held = self._pending.pop((task_id, attempt), None)
        if held is None:
            self._count("unknown")
            return {"stored": False, "reason": "no collectable call for this task attempt"}
        if not passed:
            self._count("failed")
            return {"stored": False, "reason": "the verifier did not pass it"}
        stored, reason = self.store.add(VerifiedExample.make(source="gateway", **held))
        self._count("stored" if stored else "refused")
        return {"stored": stored, "reason": reason}
