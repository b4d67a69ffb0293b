"""Domain errors raised by the service layer.

    RenderfarmError
    ├── NotFound          the thing does not exist, or belongs to another studio
    ├── InvalidRequest    the input is wrong; the message names the field
    ├── Conflict          the request is valid but not in the current state
    ├── TooLarge          a file, or a studio's stored bytes, past its limit
    ├── Unauthorized      no key, or an unknown one
    ├── Forbidden         a valid key that may not do this (a studio's, on the admin API)
    ├── TooMany           past a studio's quota or request rate: retry after a while
    ├── Unavailable       a service the farm needs (its object storage) failed: retry
    └── Misconfigured     a setting cannot work (a database URL of no known kind): fix it

The API maps each class to one HTTP status in one place (api/errors.py); the CLI
prints the message. Expected outcomes ("nothing to dispatch") are not errors.
"""

from __future__ import annotations


class RenderfarmError(Exception):
    """Base of every domain error; ``str(error)`` is safe to show a user."""


class NotFound(RenderfarmError):
    pass


class InvalidRequest(RenderfarmError):
    """``field`` of the request's ``source`` (body, path, query or header) is wrong."""

    def __init__(self, field: str, message: str, source: str = "body") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.source = source
        # Where and what, one entry per problem: a path into the request (``field``, or
        # deeper: ("template", "steps", 0, "script")) and its message.
        self.problems: list[tuple[tuple[str | int, ...], str]] = [((field,), message)]

    @classmethod
    def at(cls, problems: list[tuple[tuple[str | int, ...], str]]) -> InvalidRequest:
        """Several problems of the body, each at its own path (at least one)."""
        first = problems[0][0]
        error = cls(".".join(map(str, first)), "; ".join(m for _, m in problems))
        error.problems = list(problems)
        return error


class Conflict(RenderfarmError):
    pass


class TooLarge(RenderfarmError):
    pass


class Unauthorized(RenderfarmError):
    pass


class Forbidden(RenderfarmError):
    pass


class Unavailable(RenderfarmError):
    pass


class Misconfigured(RenderfarmError):
    """A setting the farm cannot work with; the message names the setting."""


class TooMany(RenderfarmError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds
