"""Idempotency keys of job submissions: a key remembers the request's hash and the job it created."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

CLAIM = """
INSERT INTO idempotency_keys (key, request_sha256, job_id) VALUES ($1, $2, $3)
ON CONFLICT (key) DO NOTHING
RETURNING job_id
"""
EARLIER = "SELECT request_sha256, job_id FROM idempotency_keys WHERE key = $1"


@dataclass(frozen=True)
class Earlier:
    """What a key was first used for."""

    request_sha256: str
    job_id: uuid.UUID


async def claim(conn: asyncpg.Connection, key: str, request_sha256: str, job_id: uuid.UUID) -> Earlier | None:
    """Bind `key` to this request and job; None when it is new, else what it was bound to before.

    Call inside the transaction that writes the job, so a key never points to a job that was not written.
    """
    if await conn.fetchval(CLAIM, key, request_sha256, job_id) is not None:
        return None
    row = await conn.fetchrow(EARLIER, key)
    assert row is not None  # the conflicting row exists: keys are never deleted inside a transaction's life
    return Earlier(row["request_sha256"], row["job_id"])
