"""One small error hierarchy, so every edge (CLI, REST, Python API) maps failures in one place.

The REST layer turns each class into one HTTP status; the CLI into one exit code and a message.
Library errors (aiokafka, lancedb, fastavro) are re-raised as these types where the caller can act.
"""

from __future__ import annotations


class MemstreamError(Exception):
    """Base of every error memstream raises on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(MemstreamError):
    """The request is malformed: bad ids, empty text, wrong types. Nothing was written."""

    status_code = 400


class FilterError(ValidationError):
    """A filters object is malformed. `path` names the offending part, e.g. `filters.AND[1].created_at.gte`."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class NotFoundError(MemstreamError):
    """The memory (or other object) does not exist in the caller's project."""

    status_code = 404


class AuthError(MemstreamError):
    """A missing, unknown or revoked API key."""

    status_code = 401


class ConflictError(MemstreamError):
    """The request contradicts the current state (e.g. updating an immutable memory)."""

    status_code = 409


class UnsupportedError(MemstreamError):
    """A platform feature a self-hosted server does not offer (the message says what instead)."""

    status_code = 501


class LogUnavailableError(MemstreamError):
    """The event log could not durably accept or serve events. The caller must assume nothing was written."""

    status_code = 503


class SchemaError(MemstreamError):
    """A log message cannot be decoded: unknown writer schema or corrupt body."""

    status_code = 500


class LogCorruptError(LogUnavailableError):
    """The event log holds bytes that are not a valid record where a record should be.

    Readers stop there (never treating corruption as the end of the log) and writers refuse
    to append until `memstream log repair` has quarantined the bad bytes. The message names the
    segment file, the byte offset and the log offset of the damage.
    """

    status_code = 503


class UnavailableError(MemstreamError):
    """The service cannot answer truthfully right now (e.g. the projection is being rebuilt
    from the log); the caller should retry after `retry_after_s`. Nothing was written."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(MemstreamError):
    """This API key sent more requests than its rate limit allows; retry after `retry_after_s`."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(MemstreamError):
    """The request body is larger than the configured limit. Nothing was read past it."""

    status_code = 413


class KeyStoreError(MemstreamError):
    """The subject-key store cannot be opened safely: no usable master key, or stored keys
    wrapped under a master key that is not configured. Raised at start, never silenced:
    answering "no key" would make sealed data look erased."""

    status_code = 500
