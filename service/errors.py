"""Domain errors of the session layer: what went wrong, in the service's own terms, with no HTTP in them.

The manager and the sessions raise ``SessionError``; the API edge
(``service.problems.install_problem_handlers``) is the one place that turns its
``kind`` into an HTTP status and a problem type.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why a request on the session layer was refused."""

    UNKNOWN_SESSION = "unknown-session"
    """no session has that id."""
    WRONG_STATE = "wrong-state"
    """the session or batch is not in a state that allows the request (ended, not issued, told already, no reconstruction)."""
    SERIES_TAKEN = "series-taken"
    """the detector series is bound to another batch already (a series is bound once)."""
    TOO_MANY_SESSIONS = "too-many-sessions"
    """``max_sessions`` sessions are active."""
    INVALID_REQUEST = "invalid-request"
    """the request is well-formed but refused by a limit or a rule (budget, detector, grid size, measured positions)."""
    STORAGE_UNAVAILABLE = "storage-unavailable"
    """a session file could not be created, written or read."""
    SHUTTING_DOWN = "shutting-down"
    """the service is stopping and takes no new sessions."""


class SessionError(Exception):
    """A refused request: ``kind`` says why, ``message`` says it in one line; ``retry_after_s``: when a retry may succeed."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
