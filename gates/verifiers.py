"""Deterministic verdicts on one output of one suite case.

``check_output(case, text)`` dispatches on the case's verifier kind. It never evaluates the
output in this process: the reference verifier only slices and parses, ``exact`` and
``regex`` compare text, and ``program`` runs in ``gates.sandbox``. A check that cannot
reach a verdict (a sandbox killed for a limit, a crash) gives ``error`` with the reason,
which the runner records and the gates treat as a partial run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gates.suite import SuiteCase

__all__ = ["CheckResult", "check_output"]


@dataclass(frozen=True)
class CheckResult:
    status: Literal["pass", "fail", "error"]
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def check_output(case: SuiteCase, text: str) -> CheckResult:
    from workload.tasks import Task, extract_answer, verify

    spec = case.verifier
    if spec.kind == "reference":
        task = Task(task_id=case.id, family=case.family, difficulty=case.difficulty,
                    prompt=case.prompt, answer=case.expected or "", features={},
                    verifier=spec.spec)
        result = verify(task, text)
        return CheckResult("pass" if result.passed else "fail", result.reason)
    answer = extract_answer(text)
    if spec.kind == "exact":
        if answer == case.expected:
            return CheckResult("pass", "exact match")
        return CheckResult("fail", f"expected {case.expected!r}, got {answer[:40]!r}")
    if spec.kind == "regex":
        if re.fullmatch(spec.pattern, answer):
            return CheckResult("pass", f"matches /{spec.pattern}/")
        return CheckResult("fail", f"{answer[:40]!r} does not match /{spec.pattern}/")
    if spec.kind == "program":
        from gates.sandbox import SandboxLimits, run_check

        limits = SandboxLimits(timeout_s=spec.timeout_s, cpu_s=spec.cpu_s,
                               memory_mb=spec.memory_mb)
        payload = {"output": text, "answer": answer, "expected": case.expected,
                   "prompt": case.prompt}
        try:
            result = run_check(spec.source, payload, limits)
        except OSError as exc:
            return CheckResult("error", f"sandbox could not start: {exc}")
        if result.status == "error":
            return CheckResult("error", f"program check: {result.reason}")
        return CheckResult(result.status, result.reason)
    return CheckResult("error", f"unknown verifier kind {spec.kind!r}")  # pragma: no cover
