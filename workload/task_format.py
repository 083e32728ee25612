"""The task record and its text format, shared by ``workload.tasks`` and every family.

A family generator (``workload.families.<family>``) builds its prompt body and answer and
hands them to ``make_task``, which adds the separator, the id and the common features. The
public names are re-exported by ``workload.tasks`` (and ``workload``); import them from
there. See ``docs/reference_tasks.md`` for the format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "END_MARKER",
    "MAX_ANSWER_CHARS",
    "MAX_PROMPT_CHARS",
    "PROMPT_SEPARATOR",
    "VERIFIER_EXACT",
    "VERIFIER_INT",
    "VERIFIER_STRING",
    "Task",
    "VerifierSpec",
    "make_task",
    "task_id_of",
]

# The prompt ends with a newline and "=", so the model's whole completion is the answer and
# the answer's own line holds nothing else; END_MARKER is a newline, which makes "stop at the
# end marker" and "take the first line" the same rule (vLLM: ``stop=["\n"]``).
PROMPT_SEPARATOR = "\n="
END_MARKER = "\n"
MAX_PROMPT_CHARS = 64
MAX_ANSWER_CHARS = 24

# Verifier specs: how ``verify`` compares an output with ``Task.answer``.
VERIFIER_INT = "int"  # integer literal compared by value; "011" passes, the reason says so
VERIFIER_EXACT = "exact"  # exact match after removing all whitespace
VERIFIER_STRING = "string"  # a quoted string literal ('..' or ".."); its content must match
VerifierSpec = Literal["int", "exact", "string"]


@dataclass(frozen=True, slots=True)
class Task:
    """One task. Everything is a function of ``(family, prompt)``; ``task_id`` hashes those.

    ``features`` are numeric properties readable from the prompt before solving it (for
    routing); they are excluded from the hash so that a task can live in sets and dict keys.
    Treat ``features`` as read-only.
    """

    task_id: str
    family: str
    difficulty: int
    prompt: str
    answer: str
    features: dict[str, int] = field(hash=False)
    verifier: VerifierSpec = VERIFIER_EXACT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            task_id=str(data["task_id"]),
            family=str(data["family"]),
            difficulty=int(data["difficulty"]),
            prompt=str(data["prompt"]),
            answer=str(data["answer"]),
            features=dict(data["features"]),
            verifier=data["verifier"],
        )



def task_id_of(family: str, prompt: str) -> str:
    """Stable id: the first 16 hex digits of sha256(family NUL prompt); never Python's hash()."""
    return hashlib.sha256(f"{family}\x00{prompt}".encode()).hexdigest()[:16]


def make_task(
    family: str,
    difficulty: int,
    body: str,
    answer: str,
    features: dict[str, int],
    verifier: VerifierSpec,
) -> Task:
    """Assemble a task from a family generator's parts (adds separator, id, common features)."""
    prompt = body + PROMPT_SEPARATOR
    return Task(
        task_id=task_id_of(family, prompt),
        family=family,
        difficulty=difficulty,
        prompt=prompt,
        answer=answer,
        features={"difficulty": difficulty, "prompt_chars": len(prompt), **features},
        verifier=verifier,
    )
