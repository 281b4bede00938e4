"""The gateway's small writes per request, grouped (groupcommit.py): rate-limit hits and `published_at` marks.

Both kinds go out together: a batch holds the hits of the requests that came in and the marks of the jobs that
were published while the previous batch was written, and costs one statement (keys.RATE_HITS), so a stream of
submissions pays about one round trip per batch for both instead of one for each kind. Each request still waits
for its own item: a hit's count (as if counted one after the other, rate limit exact), a mark written before the
answer (a client that reads the row after it sees the job published, and the reaper never republishes it).
"""

from __future__ import annotations

import uuid

import asyncpg

from shared.db import keys
from shared.runtime.breaker import CircuitBreaker

from .groupcommit import GroupCommit

BATCH_MAX = 500  # hits and marks written by one statement
Hit = tuple[str, int]  # (subject, window start)
Counts = tuple[int, int]  # (this window's count including the hit, the previous window's count)


class GroupedWrites:
    def __init__(self, pool: asyncpg.Pool, breaker: CircuitBreaker, window_sec: int) -> None:
        self._pool, self._window_sec = pool, window_sec
        self._batch: GroupCommit[Hit | uuid.UUID, Counts | None] = GroupCommit(self._write, BATCH_MAX, breaker)

    async def rate_hit(self, subject: str, window_start: int) -> Counts:
        """Count one request of `subject` in the window starting at `window_start`; its counts once written."""
        counts = await self._batch.add((subject, window_start))
        assert counts is not None
        return counts

    async def mark_published(self, job_id: uuid.UUID) -> None:
        """Set the job's published_at; returns once it is written."""
        await self._batch.add(job_id)

    async def _write(self, items: list[Hit | uuid.UUID]) -> list[Counts | None]:
        hits = [item for item in items if isinstance(item, tuple)]
        counted = iter(await keys.rate_hits(self._pool, hits, self._window_sec,
                                            [item for item in items if isinstance(item, uuid.UUID)]))
        return [next(counted) if isinstance(item, tuple) else None for item in items]
