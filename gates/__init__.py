"""gates: how candidates are validated before they can reach the fleet.

Suites pinned by content hash (``suite``), deterministic verifiers with a sandbox for
program checks (``verifiers``, ``sandbox``), pure gate decisions (``gates``) on recorded
runs (``records``), the runner over a serving path (``runner``, ``serving``), exact
statistics (``stats``) and evidence bundles (``evidence``). Docs: docs/gates.md.
Importing this package is light: no Ray, vLLM or torch.
"""

from gates.gates import GATE_NAMES, GateResult, Phase, overall
from gates.port import CaseOutput, GatewayServingPath, GuardrailRefusal, ServingPath
from gates.runner import GateOptions, GateReport, run_gates
from gates.suite import Suite, SuiteCase, load_reference_suite, load_suite, reference_suite

__all__ = [
    "GATE_NAMES",
    "CaseOutput",
    "GateOptions",
    "GateReport",
    "GateResult",
    "GatewayServingPath",
    "GuardrailRefusal",
    "Phase",
    "ServingPath",
    "Suite",
    "SuiteCase",
    "load_reference_suite",
    "load_suite",
    "overall",
    "reference_suite",
    "run_gates",
]
