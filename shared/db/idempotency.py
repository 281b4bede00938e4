"""Idempotency keys of job submissions: a key remembers the request's hash and the job it created."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

CLAIM = """
INSERT INTO idempotency_keys (key, request_sha256, job_id, owner) VALUES ($1, $2, $3, $4)
ON CONFLICT (owner, key) DO NOTHING
RETURNING job_id
"""
EARLIER = "SELECT request_sha256, job_id FROM idempotency_keys WHERE owner = $2 AND key = $1"


@dataclass(frozen=True)
class Earlier:
    """What a key was first used for."""

    request_sha256: str
    job_id: uuid.UUID


async def claim(
    conn: asyncpg.Connection, owner: str, key: str, request_sha256: str, job_id: uuid.UUID
) -> Earlier | None:
    """Bind the caller's `key` to this request and job; None when it is new, else what it was bound to before.
    Keys are per caller (`owner`: the API key id, "" without auth): two callers never share one.

    Call inside the transaction that writes the job, so a key never points to a job that was not written.
    """
    if await conn.fetchval(CLAIM, key, request_sha256, job_id, owner) is not None:
        return None
    row = await conn.fetchrow(EARLIER, key, owner)
    assert row is not None  # the conflicting row exists: keys are never deleted inside a transaction's life
    return Earlier(row["request_sha256"], row["job_id"])
