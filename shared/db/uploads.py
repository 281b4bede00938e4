"""Checked uploads: the first bytes (ETag, size) a job used at an upload key, their sha256, and the last use."""

from __future__ import annotations

from datetime import datetime

import asyncpg

FIND = "SELECT etag, size, sha256 FROM upload_checks WHERE key = $1"
RECORD = """
INSERT INTO upload_checks (key, etag, size, sha256) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
"""
TOUCH = "UPDATE upload_checks SET last_used_at = now() WHERE key = $1"
RECENTLY_USED = "SELECT key FROM upload_checks WHERE key = ANY($1::text[]) AND last_used_at >= $2"
FORGET = "DELETE FROM upload_checks WHERE key = $1"
# upload keys named by a job that is not over yet: their objects stay
LIVE_UPLOAD_KEYS = """
SELECT DISTINCT request->'source'->>'key' AS key FROM jobs
 WHERE status IN ('queued', 'processing') AND request->'source'->>'type' = 'upload'
   AND request->'source'->>'key' = ANY($1::text[])
"""


async def first_use(pool: asyncpg.Pool, key: str) -> asyncpg.Record | None:
    """(etag, size, sha256) of the bytes first checked at `key`, or None when no job used it yet."""
    return await pool.fetchrow(FIND, key)


async def record_check(pool: asyncpg.Pool, key: str, etag: str, size: int, sha256: str) -> asyncpg.Record:
    """Record the first use of `key`; the row that holds it afterwards (another job's, when it came first)."""
    await pool.execute(RECORD, key, etag, size, sha256)
    return await pool.fetchrow(FIND, key)


async def touch(pool: asyncpg.Pool, key: str) -> None:
    await pool.execute(TOUCH, key)


async def kept_keys(pool: asyncpg.Pool, keys: list[str], used_since: datetime) -> set[str]:
    """Of `keys`, those a live job names or a job used since `used_since`: the reaper keeps them."""
    live = {r["key"] for r in await pool.fetch(LIVE_UPLOAD_KEYS, keys)}
    recent = {r["key"] for r in await pool.fetch(RECENTLY_USED, keys, used_since)}
    return live | recent


async def forget(pool: asyncpg.Pool, key: str) -> None:
    await pool.execute(FORGET, key)
