"""The bottom layer: what every other package agrees on, and nothing else.

The two error kinds (``errors``), strict documents with content hashes (``documents``), the
fleet manifest (``manifest``), the telemetry span contract and table schemas (``spans``,
``tables``), the closed set of gate phases (``phase``) and lazy package fronts
(``fronts``). Imports nothing of the product and nothing heavy.
"""

from contracts.documents import DocumentError, Strict, content_hash
from contracts.errors import AutopilotError, PermanentError, TransientError, retry_transient
from contracts.manifest import FleetManifest, load_fleet, save_fleet, verify_files
from contracts.phase import Phase

__all__ = [
    "AutopilotError",
    "DocumentError",
    "FleetManifest",
    "PermanentError",
    "Phase",
    "Strict",
    "TransientError",
    "content_hash",
    "load_fleet",
    "retry_transient",
    "save_fleet",
    "verify_files",
]
