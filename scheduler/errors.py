"""Domain errors raised by the service layer.

    RenderfarmError
    ├── NotFound          the thing does not exist, or belongs to another studio
    ├── InvalidRequest    the input is wrong; the message names the field
    ├── Conflict          the request is valid but not in the current state
    ├── TooLarge          a file, or a studio's stored bytes, past its limit
    ├── Unauthorized      no key, or an unknown one
    ├── TooMany           past a studio's quota or request rate: retry after a while
    └── Unavailable       a service the farm needs (its object storage) failed: retry

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


class Conflict(RenderfarmError):
    pass


class TooLarge(RenderfarmError):
    pass


class Unauthorized(RenderfarmError):
    pass


class Unavailable(RenderfarmError):
    pass


class TooMany(RenderfarmError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds
