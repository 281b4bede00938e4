"""Request fingerprints on job rows: find a finished job that made exactly the clip asked for."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from shared.db.jobs import role_keys, window
from shared.jobs.contracts import ClipResult

REUSE_MARGIN_SEC = 300  # an earlier result is reused only while it has at least this long to live, s

RECORD = """
UPDATE jobs SET fingerprint = $4 WHERE id = $1 AND created_at >= $2 AND created_at < $3
"""
EARLIER_RESULT = """
SELECT result, result_video_key, result_keys, result_srt_key, result_vtt_key, result_words_key FROM jobs
WHERE fingerprint = $1 AND status = 'done' AND result_video_key IS NOT NULL
  AND expires_at > now() + make_interval(secs => $2)
ORDER BY created_at DESC
LIMIT 1
"""


async def record(pool: asyncpg.Pool, job_id: uuid.UUID, fingerprint: str) -> None:
    await pool.execute(RECORD, job_id, *window(job_id), fingerprint)


async def earlier_result(
    pool: asyncpg.Pool, fingerprint: str
) -> tuple[ClipResult, str, dict[str, str]] | None:
    """The result, clip key and other result files' keys (by role) of a live done job with this fingerprint."""
    row = await pool.fetchrow(EARLIER_RESULT, fingerprint, REUSE_MARGIN_SEC)
    if row is None:
        return None
    return msgspec.convert(row["result"], ClipResult), row["result_video_key"], role_keys(row)


