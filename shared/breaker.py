"""Circuit breakers: after repeated failures of a dependency, fail fast for a while instead of piling up.

Closed: calls go through; BREAKER_FAILURES consecutive connection failures open it. Open: calls fail at once
with `ServiceUnavailable` (503, Retry-After) for BREAKER_OPEN_SEC. Then half-open: the next call goes through;
its success closes the breaker, its failure opens it again. Each gateway replica keeps its own.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import asyncpg
import nats.errors
from botocore.exceptions import BotoCoreError

from shared.errors import ServiceUnavailable, StorageError

# Failures that say "the dependency is unreachable or unwell", not "this request was wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, nats.errors.Error, BotoCoreError, StorageError,
)


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
        if not isinstance(exc, CONNECTION_ERRORS):
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
