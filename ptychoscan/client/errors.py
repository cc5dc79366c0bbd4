"""The client's one exception: an error answer of the service, with its problem details (RFC 9457)."""

from __future__ import annotations

import math

import httpx
from pydantic import ValidationError

from service.responses import ProblemDetails


class ApiError(Exception):
    """The service answered ``status`` >= 400; ``problem`` is its problem+json body (None if the body was not one).

    ``problem.kind`` says why (unknown-session, wrong-state, invalid-request, not-ready, ...);
    ``problem.errors`` lists the refused fields of a 422; ``retry_after_s`` is the
    Retry-After header, s (None if absent).
    """

    def __init__(self, status: int, problem: ProblemDetails | None, text: str, retry_after_s: float | None = None) -> None:
        self.status = status
        self.problem = problem
        self.text = text
        self.retry_after_s = retry_after_s
        super().__init__(f"HTTP {status}: {problem.detail if problem is not None else text[:200]}")

    @property
    def kind(self) -> str | None:
        """The problem's kind (``ProblemDetails.kind``), None without a problem body."""
        return None if self.problem is None else self.problem.kind

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """The error for an answer >= 400 (the body is read already)."""
        problem = None
        try:
            problem = ProblemDetails.model_validate(response.json())
        except (ValueError, ValidationError):
            pass
        return cls(response.status_code, problem, response.text, retry_after(response))


class AskTimeout(ApiError, TimeoutError):
    """``ask`` got 503 not-ready for longer than its total wait: the session did not become ready (its last 503's details kept).

    The message says how long and how many polls, and what the session was waiting for
    when that is known (e.g. a told batch none of whose frames arrived: a detector that
    never delivers, or one streaming where the session does not read).
    """

    def __init__(self, last: ApiError, session_id: str, waited_s: float, polls: int, waiting_for: str | None = None) -> None:
        super().__init__(last.status, last.problem, last.text, last.retry_after_s)
        self.session_id, self.waited_s, self.polls, self.waiting_for = session_id, waited_s, polls, waiting_for
        why = f": {waiting_for}" if waiting_for else ""
        self.args = (f"ask: session {session_id} not ready after {waited_s:.1f} s ({polls} polls answered 503 not-ready){why}",)


MAX_RETRY_AFTER_S = 300.0
"""a longer Retry-After is waited out in this many seconds, s."""


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (its delta-seconds form, the one the service sends); None if absent or not a number."""
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None  # 'nan' or 'inf' parse as floats and would make time.sleep raise (review)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
