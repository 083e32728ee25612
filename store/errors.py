"""What the store refuses, as the product's two error kinds.

Every rule the store enforces raises a ``StoreError`` subclass (a ``PermanentError``: the
same call will fail the same way); a busy or unreachable database raises ``StoreBusy`` (a
``TransientError``: retry with backoff). Foreign exceptions never cross the store's
boundary; ``translate_database_errors`` turns them into one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from contracts.errors import PermanentError, TransientError

__all__ = [
    "DecisionAlreadyRecorded",
    "EvidenceMismatch",
    "IllegalTransition",
    "NotFoundError",
    "PolicyVersionConflict",
    "PromotionRefused",
    "SchemaVersionError",
    "StoreBusy",
    "StoreError",
    "StoreIntegrityError",
    "translate_database_errors",
]


class StoreError(PermanentError):
    """The store refused the call: bad input, a violated rule, or a damaged database."""


class StoreBusy(TransientError):
    """The database is locked, busy or unreachable right now; the same call may succeed."""


class NotFoundError(StoreError):
    """A policy version, proposal or evidence bundle that the store does not hold."""


class PolicyVersionConflict(StoreError):
    """A different spec under a version number that is already taken."""


class IllegalTransition(StoreError):
    """A proposal move the lifecycle does not allow; names both states."""

    def __init__(self, proposal_id: str, from_state: str, to_state: str, hint: str = ""):
        self.proposal_id = proposal_id
        self.from_state = from_state
        self.to_state = to_state
        message = f"proposal {proposal_id}: illegal transition {from_state} -> {to_state}"
        super().__init__(f"{message} ({hint})" if hint else message)


class DecisionAlreadyRecorded(StoreError):
    """A proposal gets one approval decision; a second is refused."""


class EvidenceMismatch(StoreError):
    """An evidence bundle recorded on a proposal it did not judge: the candidate or
    baseline hash it names is not the proposal's, or its verdict is not the one recorded."""


class PromotionRefused(StoreError):
    """Activating a proposal's policy would break the active pointer's story."""


class SchemaVersionError(StoreError):
    """The database schema is newer than the code, or no migration path exists."""


class StoreIntegrityError(StoreError):
    """The database refused a change (a constraint), or stored data fails its own hash."""


# Fragments of driver messages (SQLite, psycopg, pg8000) that mean "try again later".
_TRANSIENT_MARKERS = (
    "database is locked",
    "database is busy",
    "database table is locked",
    "could not connect",
    "connection refused",
    "connection reset",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "timeout expired",
    "timed out",
    "deadlock detected",
    "could not serialize access",
)


def _is_transient(err: sa_exc.DBAPIError) -> bool:
    if err.connection_invalidated:
        return True
    text = str(err.orig).lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


@contextmanager
def translate_database_errors(what: str) -> Iterator[None]:
    """Re-raise SQLAlchemy/driver errors as StoreBusy or a StoreError naming ``what``."""
    try:
        yield
    except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as err:
        raise StoreBusy(f"{what}: database unavailable ({err}); retry later") from err
    except sa_exc.IntegrityError as err:
        raise StoreIntegrityError(
            f"{what}: the database refused the change (constraint violated: {err.orig})"
        ) from err
    except sa_exc.DBAPIError as err:
        if _is_transient(err):
            raise StoreBusy(f"{what}: database busy or unreachable ({err.orig}); retry later") from err
        raise StoreError(f"{what}: database error ({err.orig})") from err
    except sa_exc.SQLAlchemyError as err:
        raise StoreError(f"{what}: {err}") from err
