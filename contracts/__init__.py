"""The bottom layer: what every other package agrees on, and nothing else.

The two error kinds (``errors``), strict documents with content hashes (``documents``), the
fleet manifest (``manifest``), the telemetry span contract and table schemas (``spans``,
``tables``), the closed set of gate phases (``phase``), the guardrail caps and their one
refusal (``guardrails``) and lazy package fronts (``fronts``). Imports nothing of the
product and nothing heavy.
"""

from contracts.documents import DocumentError, Strict, content_hash
from contracts.errors import AutopilotError, PermanentError, TransientError, retry_transient
from contracts.files import atomic_write_bytes, atomic_write_text
from contracts.guardrails import CAPS, TASK_CAPS, Cap, GuardrailRefusal
from contracts.manifest import FleetManifest, load_fleet, save_fleet, verify_files
from contracts.phase import Phase
from contracts.prediction import Prediction

__all__ = [
    "CAPS",
    "TASK_CAPS",
    "AutopilotError",
    "Cap",
    "DocumentError",
    "FleetManifest",
    "GuardrailRefusal",
    "PermanentError",
    "Phase",
    "Prediction",
    "Strict",
    "TransientError",
    "atomic_write_bytes",
    "atomic_write_text",
    "content_hash",
    "load_fleet",
    "retry_transient",
    "save_fleet",
    "verify_files",
]
