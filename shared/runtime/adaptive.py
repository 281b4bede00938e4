"""Adaptive concurrency (AIMD): fewer requests in flight when the server throttles, more again after successes.

S3 answers `503 SlowDown` when a prefix gets more requests than it can take. Sending the same number again only
prolongs it, so each throttle halves the limit (at most once per CUT_COOLDOWN_SEC, since the requests already in
flight report the same overload) and every RAISE_AFTER_SUCCESSES successes add one slot back, up to the ceiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

RAISE_AFTER_SUCCESSES = 2  # successes that add one slot back
CUT_COOLDOWN_SEC = 0.2  # throttles within this long after a cut count as the same overload, s
HISTORY_MAX = 1000  # limit changes kept for inspection
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "ServiceUnavailable", "503", "429"})


class AdaptiveLimit:
    """A concurrency limit between `floor` and `ceiling` that halves on throttles and grows by one on successes."""

    def __init__(self, ceiling: int, floor: int = 1) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.limit = self.ceiling
        self.history: list[int] = [self.limit]  # the limit after every change, first the start value
        self.throttles = 0
        self._in_flight = 0
        self._successes = 0
        self._cut_at = float("-inf")
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `limit` slots for a request."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._in_flight < self.limit)
            self._in_flight += 1
        try:
            yield
        finally:
            async with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def throttled(self) -> None:
        """The server said slow down: halve the limit (once per burst)."""
        self.throttles += 1
        self._successes = 0
        now = time.monotonic()
        if now - self._cut_at < CUT_COOLDOWN_SEC:
            return
        self._cut_at = now
        self._set(max(self.floor, self.limit // 2))

    def succeeded(self) -> None:
        """A request went through: after RAISE_AFTER_SUCCESSES of them, one more slot."""
        self._successes += 1
        if self._successes >= RAISE_AFTER_SUCCESSES and self.limit < self.ceiling:
            self._successes = 0
            self._set(self.limit + 1)

    def _set(self, value: int) -> None:
        if value != self.limit:
            self.limit = value
            if len(self.history) < HISTORY_MAX:
                self.history.append(value)
