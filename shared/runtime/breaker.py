"""Circuit breakers: after repeated failures of a dependency, fail fast for a while instead of piling up.

Closed: calls go through; BREAKER_FAILURES consecutive transport failures open it. Open: calls fail at once
with `ServiceUnavailable` (503, Retry-After) for BREAKER_OPEN_SEC. Then half-open: the next call goes through;
its success closes the breaker, its failure opens it again. Each gateway replica keeps its own.

Only transport failures count (`is_transport_failure`: timeouts, connection errors, the dependency's own 5xx or
"unavailable" answers). An error that is the request's fault (an S3 4xx for a bad key, a NATS MaxPayloadError,
a constraint violation) passes through unchanged and leaves the breaker as it was: a user cannot open it.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import asyncpg
import botocore.exceptions
import nats.errors
import nats.js.errors
from botocore.exceptions import ClientError

from shared.errors import ServiceUnavailable

MAX_CAUSE_DEPTH = 8  # links of an exception's __cause__ chain examined for a transport failure
SERVER_ERROR_STATUS = 500  # S3 HTTP status / JetStream API code from which the dependency itself is failing
# SQLSTATE classes of a PostgreSQL that is unreachable or unwell: connection exception, insufficient resources,
# operator intervention (shutdown, cannot connect now, query cancelled by a timeout), system error, internal error
POSTGRES_UNWELL_CLASSES = frozenset({"08", "53", "57", "58", "XX"})
NATS_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError, nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError, nats.errors.NoRespondersError, nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError, nats.errors.ProtocolError, nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
)
BOTOCORE_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,  # refused, reset, timed out, TLS
)


def is_transport_failure(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) says the dependency is unreachable or unwell.

    False for everything that is the request's own fault or a bug of ours: those must not open a breaker.
    """
    current: BaseException | None = exc
    for _ in range(MAX_CAUSE_DEPTH):
        if current is None:
            return False
        verdict = _verdict(current)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


def _verdict(exc: BaseException) -> bool | None:
    """True: transport failure; False: the dependency answered (the request was wrong); None: look at the cause."""
    if isinstance(exc, ClientError):  # S3 answered: only its 5xx says it is unwell
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return int(status) >= SERVER_ERROR_STATUS
    if isinstance(exc, BOTOCORE_TRANSPORT_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.BotoCoreError):  # e.g. ParamValidationError: the request was wrong
        return False
    if isinstance(exc, nats.js.errors.APIError):  # JetStream answered with an error code
        return (exc.code or 0) >= SERVER_ERROR_STATUS
    if isinstance(exc, NATS_TRANSPORT_ERRORS):
        return True
    if isinstance(exc, nats.errors.Error):  # MaxPayloadError, BadSubjectError, ...: the request's fault
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in POSTGRES_UNWELL_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):  # the plain class: "connection is closed", "pool is closing";
        return type(exc) is asyncpg.InterfaceError  # its subclasses: a bad query argument (DataError), configuration
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, OSError)):  # ConnectionError is an OSError
        return True
    return None


class CircuitBreaker:
    """Guards the calls to one dependency: `async with breaker:` around them."""

    def __init__(self, name: str, failures: int, open_sec: float) -> None:
        self.name = name
        self._threshold = failures
        self._open_sec = open_sec
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None and time.monotonic() - self._opened_at < self._open_sec

    def _retry_after(self) -> int:
        if self._opened_at is None:
            return max(1, round(self._open_sec))
        return max(1, round(self._open_sec - (time.monotonic() - self._opened_at)))

    def refuse_if_open(self) -> None:
        """Shed load: raise ServiceUnavailable while the breaker is open."""
        if self.is_open:
            raise ServiceUnavailable(
                f"{self.name} is failing; requests are refused for a moment to let it recover",
                retry_after_sec=self._retry_after(),
            )

    async def __aenter__(self) -> CircuitBreaker:
        self.refuse_if_open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._failures, self._opened_at = 0, None
            return
        if not is_transport_failure(exc):  # the request's own error: not counted, breaker unchanged
            return
        self._failures += 1
        if self._failures >= self._threshold or self._opened_at is not None:  # a failed half-open try re-opens
            self._opened_at = time.monotonic()
        raise ServiceUnavailable(
            f"{self.name} is unavailable ({type(exc).__name__}); try again shortly",
            retry_after_sec=self._retry_after(),
        ) from exc


class Breakers:
    """One breaker per dependency of the gateway."""

    def __init__(self, failures: int, open_sec: float) -> None:
        self.db = CircuitBreaker("PostgreSQL", failures, open_sec)
        self.nats = CircuitBreaker("NATS", failures, open_sec)
        self.s3 = CircuitBreaker("object storage", failures, open_sec)
