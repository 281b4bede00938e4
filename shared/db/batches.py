"""Batch rows: the jobs made by one `POST /api/jobs` with `clips`, and the source the batch's first job staged.

The fetcher stages a batch's source once (services/fetcher/batch.py): the job that takes the batch's staging
lock (a session advisory lock, so a killed fetcher's lock goes with its connection) stages the union of the
clips' ranges and records it here; every other job of the batch waits for that record and reads the staged copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from shared.db.jobs import NOT_ENDED, window
from shared.db.keys import Quotas

INSERT_BATCH = "INSERT INTO batches (id, owner, source, clips, job_ids) VALUES ($1, $2, $3, $4, $5)"
SELECT_BATCH = "SELECT * FROM batches WHERE id = $1"
# The batch's jobs in one scan: their ids were made together, so their created_at lie within [$2, $3).
BATCH_JOBS = "SELECT * FROM jobs WHERE id = ANY($1::uuid[]) AND created_at >= $2 AND created_at < $3"
SET_STAGED = "UPDATE batches SET staged = $2 WHERE id = $1 AND staged IS NULL"
SET_STAGE_ERROR = "UPDATE batches SET stage_error = $2 WHERE id = $1 AND staged IS NULL"
ADMIT_BATCH = "SELECT admit_batch($1, $2, $3, $4, $5, $6)"
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('clipjet-batch:' || current_schema() || ':' || $1))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('clipjet-batch:' || current_schema() || ':' || $1))"
# Batches whose staged objects no job of theirs can still read: every job ended.
STAGING_DUE = f"""
SELECT b.id, b.staged FROM batches b
WHERE b.staged IS NOT NULL AND b.staging_cleaned_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = ANY(b.job_ids) AND j.{NOT_ENDED})
ORDER BY b.created_at LIMIT $1
"""
MARK_STAGING_CLEANED = "UPDATE batches SET staging_cleaned_at = now() WHERE id = $1"


class StagedSpan(msgspec.Struct, rename="camel", kw_only=True):
    """One staged object: the source from `cutStartSec` (a keyframe) to `endSec`; its t=0 is `offsetSec`."""

    cut_start_sec: float
    end_sec: float
    offset_sec: float
    key: str
    size: int
    sha256: str


class StagedSource(msgspec.Struct, rename="camel", kw_only=True):
    """What a batch's staging made: the source's identity (for request fingerprints) and duration, its spans."""

    identity: str
    duration_sec: float
    spans: list[StagedSpan]

    def span_for(self, start: float, end: float) -> StagedSpan | None:
        """The span holding [start, end] (and its keyframe before start), or None."""
        for span in self.spans:
            if span.cut_start_sec <= start and end <= span.end_sec + 1e-6:
                return span
        return None


class StageError(msgspec.Struct, kw_only=True):
    code: str
    message: str


@dataclass(frozen=True)
class Batch:
    id: uuid.UUID
    owner: str | None
    created_at: datetime
    source: dict[str, Any]
    clips: list[tuple[float, float]]
    job_ids: list[uuid.UUID]
    staged: StagedSource | None
    stage_error: StageError | None


def _batch(row: asyncpg.Record) -> Batch:
    return Batch(
        id=row["id"], owner=row["owner"], created_at=row["created_at"], source=row["source"],
        clips=[(float(a), float(b)) for a, b in row["clips"]], job_ids=list(row["job_ids"]),
        staged=msgspec.convert(row["staged"], StagedSource) if row["staged"] is not None else None,
        stage_error=msgspec.convert(row["stage_error"], StageError) if row["stage_error"] is not None else None,
    )


async def admit(conn: asyncpg.Connection, owner: str, quotas: Quotas, count: int, clip_seconds: float) -> str | None:
    """The first quota a batch of `count` jobs (`clip_seconds` in all) would exceed, else None; hold the
    transaction that inserts them."""
    return await conn.fetchval(ADMIT_BATCH, owner, quotas.max_in_flight, quotas.max_jobs_per_day,
                               quotas.max_source_seconds_per_day, count, clip_seconds)


async def insert(
    conn: asyncpg.Connection, batch_id: uuid.UUID, owner: str | None, source: Any,
    clips: list[tuple[float, float]], job_ids: list[uuid.UUID],
) -> None:
    await conn.execute(INSERT_BATCH, batch_id, owner, msgspec.to_builtins(source), [list(c) for c in clips], job_ids)


async def get(pool: asyncpg.Pool | asyncpg.Connection, batch_id: uuid.UUID) -> Batch | None:
    row = await pool.fetchrow(SELECT_BATCH, batch_id)
    return _batch(row) if row is not None else None


async def jobs_of(pool: asyncpg.Pool, batch: Batch) -> list[asyncpg.Record]:
    """The batch's job rows, in the order of its clips."""
    windows = [window(job_id) for job_id in batch.job_ids]
    low, high = min(w[0] for w in windows), max(w[1] for w in windows)
    rows = {row["id"]: row for row in await pool.fetch(BATCH_JOBS, batch.job_ids, low, high)}
    return [rows[job_id] for job_id in batch.job_ids if job_id in rows]


async def set_staged(pool: asyncpg.Pool, batch_id: uuid.UUID, staged: StagedSource) -> None:
    await pool.execute(SET_STAGED, batch_id, msgspec.to_builtins(staged))


async def set_stage_error(pool: asyncpg.Pool, batch_id: uuid.UUID, code: str, message: str) -> None:
    await pool.execute(SET_STAGE_ERROR, batch_id, {"code": code, "message": message})


@asynccontextmanager
async def staging_turn(pool: asyncpg.Pool, batch_id: uuid.UUID, poll_sec: float) -> AsyncIterator[None]:
    """Hold the batch's staging lock (waiting, polling every `poll_sec`, for whoever holds it); a session lock on
    a connection kept for the turn, so it is released when the holder's connection ends (a killed fetcher)."""
    name = str(batch_id)
    while True:
        conn = await pool.acquire()
        try:
            if await conn.fetchval(TRY_LOCK, name):
                try:
                    yield
                finally:
                    await asyncio.shield(conn.execute(UNLOCK, name))
                return
        finally:
            await pool.release(conn)
        await asyncio.sleep(poll_sec)


async def staging_due(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Staged batches whose jobs have all ended (id, staged)."""
    return await pool.fetch(STAGING_DUE, limit)


async def mark_staging_cleaned(pool: asyncpg.Pool, batch_id: uuid.UUID) -> None:
    await pool.execute(MARK_STAGING_CLEANED, batch_id)
