"""The closed set of gate results. Only PASSED advances a candidate by itself.

Shared by the gates (which decide a phase), the store (which records it as a proposal's
verdict) and the reports; it lives here so none of them imports another for an enum.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Phase"]


class Phase(str, Enum):
    PASSED = "PASSED"
    FAILED = "FAILED"
    ERROR = "ERROR"
    INCONCLUSIVE = "INCONCLUSIVE"
