"""API key rows, the per-key quota admission, and the shared rate-limit windows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import grouped
from shared.jobs.apikeys import NewKey
from shared.net.webhook_sign import new_secret

INSERT_KEY = """
INSERT INTO api_keys (id, secret_sha256, name, admin, priorities, max_in_flight, max_jobs_per_day,
                      max_source_seconds_per_day, max_upload_bytes_per_day, webhook_secret, default_webhook)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""
SELECT_KEY = "SELECT * FROM api_keys WHERE id = $1"
LIST_KEYS = "SELECT * FROM api_keys ORDER BY created_at"
REVOKE_KEY = "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id"
ADMIT_JOB = "SELECT admit_job($1, $2, $3, $4, $5)"
ADMIT_UPLOAD = "SELECT admit_upload($1, $2, $3, $4)"
UPLOADED_TODAY = """
SELECT coalesce(sum(size), 0) FROM upload_slots
WHERE owner = $1 AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
"""
UPLOAD_SLOTS_PRUNE = "DELETE FROM upload_slots WHERE created_at < now() - interval '2 days'"
USAGE = """
SELECT
  (SELECT count(*) FROM jobs WHERE owner = $1 AND status IN ('queued', 'processing')) AS in_flight,
  count(*) AS jobs_today,
  coalesce(sum((request->>'endSec')::float8 - (request->>'startSec')::float8), 0) AS source_seconds_today
FROM jobs WHERE owner = $1 AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
"""
RATE_WINDOW_SEC = 60  # the sliding window of the gateway's rate limit, s
RATE_PRUNE = "DELETE FROM rate_windows WHERE window_start < $1"


@dataclass(frozen=True)
class Quotas:
    """What one key may use: jobs queued or processing at once, jobs and source seconds per UTC day."""

    max_in_flight: int
    max_jobs_per_day: int
    max_source_seconds_per_day: float
    max_upload_bytes_per_day: int = 100 * 1024**3  # the sizes of its upload slots per UTC day, bytes


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret_sha256: bytes
    name: str
    admin: bool
    priorities: tuple[str, ...]
    quotas: Quotas
    created_at: datetime
    revoked_at: datetime | None
    default_webhook: str | None = None  # the webhook of its jobs that name none


def _key(row: asyncpg.Record) -> ApiKey:
    quotas = Quotas(row["max_in_flight"], row["max_jobs_per_day"], row["max_source_seconds_per_day"],
                    row["max_upload_bytes_per_day"])
    return ApiKey(row["id"], bytes(row["secret_sha256"]), row["name"], row["admin"], tuple(row["priorities"]),
                  quotas, row["created_at"], row["revoked_at"], row["default_webhook"])


async def insert_key(
    pool: asyncpg.Pool, new: NewKey, name: str, *, admin: bool, priorities: tuple[str, ...], quotas: Quotas,
    webhook_secret: str | None = None, default_webhook: str | None = None,
) -> str:
    """Store the key; its webhook signing secret (`webhook_secret`, else a new one), to show once."""
    secret = webhook_secret or new_secret()
    await pool.execute(INSERT_KEY, new.key_id, new.secret_sha256, name, admin, list(priorities),
                       quotas.max_in_flight, quotas.max_jobs_per_day, quotas.max_source_seconds_per_day,
                       quotas.max_upload_bytes_per_day, secret, default_webhook)
    return secret


async def find_key(pool: asyncpg.Pool, key_id: str) -> ApiKey | None:
    row = await pool.fetchrow(SELECT_KEY, key_id)
    return _key(row) if row is not None else None


async def list_keys(pool: asyncpg.Pool) -> list[ApiKey]:
    return [_key(row) for row in await pool.fetch(LIST_KEYS)]


async def revoke_key(pool: asyncpg.Pool, key_id: str) -> bool:
    return await pool.fetchval(REVOKE_KEY, key_id) is not None


async def admit_job(conn: asyncpg.Connection, owner: str, quotas: Quotas, clip_seconds: float) -> str | None:
    """The first quota a new job of `owner` would exceed (None: it fits); hold the transaction that inserts it."""
    return await conn.fetchval(ADMIT_JOB, owner, quotas.max_in_flight, quotas.max_jobs_per_day,
                               quotas.max_source_seconds_per_day, clip_seconds)


async def admit_upload(pool: asyncpg.Pool, owner: str, key: str, size: int, quotas: Quotas) -> bool:
    """Record a new upload slot of `size` bytes for `owner`; False (nothing recorded) when it would go over the
    key's upload bytes this UTC day."""
    return bool(await pool.fetchval(ADMIT_UPLOAD, owner, key, size, quotas.max_upload_bytes_per_day))


async def uploaded_today(pool: asyncpg.Pool, owner: str) -> int:
    return int(await pool.fetchval(UPLOADED_TODAY, owner))


async def usage(pool: asyncpg.Pool, owner: str) -> asyncpg.Record:
    """in_flight, jobs_today, source_seconds_today of a key."""
    row = await pool.fetchrow(USAGE, owner)
    assert row is not None  # an aggregate always returns one row
    return row


async def rate_hit(pool: asyncpg.Pool, subject: str, window_start: int, window_sec: int) -> tuple[int, int]:
    """Count one request of `subject` in the window starting at `window_start`; (this window, the previous one)."""
    return (await rate_hits(pool, [(subject, window_start)], window_sec))[0]


async def rate_hits(pool: asyncpg.Pool, hits: list[tuple[str, int]], window_sec: int) -> list[tuple[int, int]]:
    """Count requests, each a (subject, window start), in one statement; for each, in order, (this window's
    count including it and the requests before it in `hits`, the previous window's count): as if counted one
    after the other (shared/db/grouped.py, the gateway's grouped statement)."""
    return (await grouped.write(pool, hits, window_sec))[0]


async def prune_rate_windows(pool: asyncpg.Pool, before: int) -> None:
    """Drop rate-limit windows before `before` and upload-slot records no daily quota reads any more."""
    await pool.execute(RATE_PRUNE, before)
    await pool.execute(UPLOAD_SLOTS_PRUNE)
