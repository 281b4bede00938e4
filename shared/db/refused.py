"""Jobs whose message was refused before any stage began it (published straight to NATS, not decodable).

Such a job may have no row yet (a direct message's row is written when a stage begins it): the refusal writes
it, failed, so its publisher can read why (`GET /api/jobs/{id}`, `job_events`, the end event).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.db.jobs import FAIL, INSERT_EVENT, shard_of, window
from shared.jobs.ids import created_at_of

INSERT_FAILED_JOB = """
INSERT INTO jobs (id, created_at, priority, shard, request, status, error_code, error_message)
SELECT $1, $2, $3, $4, $5, 'failed', $8, $9
WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND created_at >= $6 AND created_at < $7)
ON CONFLICT DO NOTHING
RETURNING id
"""


async def refuse(
    pool: asyncpg.Pool, job_id: uuid.UUID, code: str, message: str, request: dict[str, Any], priority: str
) -> bool:
    """Fail the job, writing its row (failed, `request` as it came) when there is none; False when it had
    already ended. Its `failed` event says `refused`."""
    created = created_at_of(job_id) or datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(FAIL, job_id, *window(job_id), code, message)
        if row is None:
            row = await conn.fetchrow(
                INSERT_FAILED_JOB, job_id, created, priority, shard_of(job_id), request, *window(job_id), code, message
            )
        if row is None:
            return False
        await conn.execute(INSERT_EVENT, job_id, "failed", {"code": code, "message": message, "refused": True})
        return True
