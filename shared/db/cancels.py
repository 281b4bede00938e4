"""A client's cancel of a job: the row becomes `canceled` (once, only while queued or processing)."""

from __future__ import annotations

import uuid

import asyncpg

from shared.db.jobs import INSERT_EVENT, NOT_ENDED, STATUS_OF, window

CANCEL = f"""
UPDATE jobs SET status = 'canceled', updated_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND {NOT_ENDED}
RETURNING *
"""


async def cancel(pool: asyncpg.Pool, job_id: uuid.UUID, by: str | None) -> asyncpg.Record | None:
    """Job → canceled with a `canceled` event naming the key that asked (`by`); the row as it is now, or None
    when the job had already ended."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(CANCEL, job_id, *window(job_id))
        if row is not None:
            await conn.execute(INSERT_EVENT, job_id, "canceled", {"by": by, "stage": row["stage"]})
        return row


async def is_canceled(pool: asyncpg.Pool, job_id: uuid.UUID) -> bool:
    return await pool.fetchval(STATUS_OF, job_id, *window(job_id)) == "canceled"
