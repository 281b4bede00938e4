"""`published_at` of new jobs, written for many jobs in one statement (group commit, groupcommit.py).

Each request still waits until its own job's row is marked (as before: a client that reads the row after the
answer sees it published), but requests that finish their publish while a batch is being written are marked
together by the next one, so under load the database sees one UPDATE per batch instead of one per job."""

from __future__ import annotations

import uuid

import asyncpg

from shared.db import jobs
from shared.runtime.breaker import CircuitBreaker

from .groupcommit import GroupCommit

BATCH_MAX = 500  # jobs marked by one statement


class PublishedMarks:
    def __init__(self, pool: asyncpg.Pool, breaker: CircuitBreaker) -> None:
        self._pool = pool
        self._marks: GroupCommit[uuid.UUID, None] = GroupCommit(self._write, BATCH_MAX, breaker)

    async def mark(self, job_id: uuid.UUID) -> None:
        """Set the job's published_at; returns once it is written (raises what the write raised: ServiceUnavailable
        when PostgreSQL failed, the breaker having counted the shared write once; not to be wrapped in it again)."""
        await self._marks.add(job_id)

    async def _write(self, job_ids: list[uuid.UUID]) -> list[None]:
        await jobs.mark_many_published(self._pool, job_ids)
        return [None] * len(job_ids)
