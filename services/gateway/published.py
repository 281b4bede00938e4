"""`published_at` of new jobs, written for many jobs in one statement (group commit).

Each request still waits until its own job's row is marked (as before: a client that reads the row after the
answer sees it published), but requests that finish their publish while a batch is being written are marked
together by the next one, so under load the database sees one UPDATE per batch instead of one per job."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from shared.db import jobs

BATCH_MAX = 500  # jobs marked by one statement


class PublishedMarks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[uuid.UUID, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def mark(self, job_id: uuid.UUID) -> None:
        """Set the job's published_at; returns once it is written (raises what the write raised)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH_MAX], self._waiting[BATCH_MAX:]
                try:
                    await jobs.mark_many_published(self._pool, [job_id for job_id, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None
