"""The gateway's small statements per request, grouped (groupcommit.py): rate-limit hits, `published_at` marks,
and the job row a `GET /api/jobs/{id}` reads along with its hit.

They all go out together: a batch holds the hits of the requests that came in (with the rows the GETs among them
read), and the marks of the jobs published while the previous batch was written, and costs one statement
(shared/db/grouped.py), so a stream of requests pays about one round trip per batch instead of one per request and
kind. Each request still waits for its own item: a hit's count (as if counted one after the other: the rate limit
stays exact), a mark written before the answer (a client that reads the row after it sees the job published, and
the reaper never republishes it), a row as it was when its hit was counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import cast

import asyncpg

from shared.db import grouped
from shared.db.grouped import Counts, Hit
from shared.runtime.breaker import CircuitBreaker

from .groupcommit import GroupCommit

BATCH_MAX = 500  # hits, marks and reads written by one statement


@dataclass(frozen=True, slots=True)
class _HitAndRead:
    hit: Hit
    job_id: uuid.UUID


Item = Hit | uuid.UUID | _HitAndRead
Result = Counts | tuple[Counts, asyncpg.Record | None] | None


class GroupedWrites:
    def __init__(self, pool: asyncpg.Pool, breaker: CircuitBreaker, window_sec: int) -> None:
        self._pool, self._window_sec = pool, window_sec
        self._batch: GroupCommit[Item, Result] = GroupCommit(self._write, BATCH_MAX, breaker)

    async def rate_hit(self, subject: str, window_start: int) -> Counts:
        """Count one request of `subject` in the window starting at `window_start`; its counts once written."""
        return cast(Counts, await self._batch.add((subject, window_start)))

    async def rate_hit_and_read(self, subject: str, window_start: int,
                                job_id: uuid.UUID) -> tuple[Counts, asyncpg.Record | None]:
        """`rate_hit`, and the row of job `job_id` (None: no such job) read by the same statement."""
        return cast(tuple[Counts, asyncpg.Record | None],
                    await self._batch.add(_HitAndRead((subject, window_start), job_id)))

    async def mark_published(self, job_id: uuid.UUID) -> None:
        """Set the job's published_at; returns once it is written."""
        await self._batch.add(job_id)

    async def _write(self, items: list[Item]) -> list[Result]:
        hits = [item.hit if isinstance(item, _HitAndRead) else item
                for item in items if not isinstance(item, uuid.UUID)]
        counts, rows = await grouped.write(
            self._pool, hits, self._window_sec, [item for item in items if isinstance(item, uuid.UUID)],
            [item.job_id for item in items if isinstance(item, _HitAndRead)])
        counted = iter(counts)
        results: list[Result] = []
        for item in items:
            if isinstance(item, uuid.UUID):
                results.append(None)
            elif isinstance(item, _HitAndRead):
                results.append((next(counted), rows.get(item.job_id)))
            else:
                results.append(next(counted))
        return results
