"""Checked uploads: the sha256 of an upload's exact bytes (key, ETag, size), recorded once."""

from __future__ import annotations

import asyncpg

FIND = "SELECT sha256 FROM upload_checks WHERE key = $1 AND etag = $2 AND size = $3"
RECORD = """
INSERT INTO upload_checks (key, etag, size, sha256) VALUES ($1, $2, $3, $4)
ON CONFLICT (key, etag, size) DO NOTHING
"""


async def checked_sha256(pool: asyncpg.Pool, key: str, etag: str, size: int) -> str | None:
    """The recorded sha256 of these exact bytes, or None when they were not checked yet."""
    return await pool.fetchval(FIND, key, etag, size)


async def record_check(pool: asyncpg.Pool, key: str, etag: str, size: int, sha256: str) -> None:
    await pool.execute(RECORD, key, etag, size, sha256)
