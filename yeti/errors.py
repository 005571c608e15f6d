"""
Errors that map to client-visible responses.

Every error a client may see is a L{YetiError}: it carries the HTTP status and
a one-line message that is safe to show (no traceback, no internals).
"""

from __future__ import annotations


class YetiError(Exception):
    """An error with an HTTP status and a message safe to send to clients."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(YetiError):
    """Malformed request: bad JSON, bad parameter, bad filter (400)."""

    status = 400


class ValidationError(BadRequest):
    """A record does not match its table's schema (400)."""


class FiqlError(BadRequest):
    """A FIQL filter, sort, select, limit or offset could not be parsed (400)."""


class NotFound(YetiError):
    """Unknown application, table or record (404)."""

    status = 404


class MethodNotAllowed(YetiError):
    """The method is not allowed on this resource (405)."""

    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Conflict(YetiError):
    """A record with this id already exists (409)."""

    status = 409


class PayloadTooLarge(YetiError):
    """Request body larger than the configured limit (413)."""

    status = 413


class UnsupportedMediaType(YetiError):
    """Request body is not JSON (415)."""

    status = 415


class StorageError(YetiError):
    """The database failed (500)."""

    status = 500


class Unavailable(YetiError):
    """Backpressure or a temporarily unavailable database (503)."""

    status = 503


class ConfigError(Exception):
    """
    A start-up problem: bad config, bad schema, unusable port or certificate.

    The message is one line naming the file and key (or line) at fault.
    """
