"""The reference fleet: synthetic code-task families with deterministic verifiers (``tasks``).

The tiny CPU tiers are trained on these tasks, the workload driver serves them and the gate
suites replay them. Everything here is pure Python and imports in milliseconds.
"""

from workload.tasks import (
    DIFFICULTIES,
    END_MARKER,
    FAMILIES,
    HELDOUT_PERCENT,
    MAX_ANSWER_CHARS,
    MAX_PROMPT_CHARS,
    PROMPT_SEPARATOR,
    VERIFIER_EXACT,
    VERIFIER_INT,
    VERIFIER_STRING,
    Task,
    UnsafeExpressionError,
    VerifierResult,
    bracket_completion,
    extract_answer,
    format_example,
    generate_tasks,
    iter_tasks,
    make_task,
    safe_eval,
    split_of,
    split_tasks,
    task_id_of,
    verify,
)

__all__ = [
    "DIFFICULTIES",
    "END_MARKER",
    "FAMILIES",
    "HELDOUT_PERCENT",
    "MAX_ANSWER_CHARS",
    "MAX_PROMPT_CHARS",
    "PROMPT_SEPARATOR",
    "VERIFIER_EXACT",
    "VERIFIER_INT",
    "VERIFIER_STRING",
    "Task",
    "UnsafeExpressionError",
    "VerifierResult",
    "bracket_completion",
    "extract_answer",
    "format_example",
    "generate_tasks",
    "iter_tasks",
    "make_task",
    "safe_eval",
    "split_of",
    "split_tasks",
    "task_id_of",
    "verify",
]
