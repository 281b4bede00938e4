"""Webhook state on job rows, and the per-key signing secrets (the notifier reads them to sign)."""

from __future__ import annotations

import uuid

import asyncpg

from shared.db.jobs import window
from shared.jobs.contracts import WebhookStatus

RECORD_ATTEMPT = """
UPDATE jobs SET webhook_status = $4, webhook_attempts = $5, webhook_last_status_code = $6,
       webhook_last_error = $7, webhook_last_attempt_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3
"""
SIGNING_SECRET = "SELECT webhook_secret FROM api_keys WHERE id = $1"
ROTATE_SECRET = "UPDATE api_keys SET webhook_secret = $2 WHERE id = $1 RETURNING id"
SET_DEFAULT_WEBHOOK = "UPDATE api_keys SET default_webhook = $2 WHERE id = $1 RETURNING id"


async def record_attempt(pool: asyncpg.Pool, job_id: uuid.UUID, status: WebhookStatus, attempts: int,
                         status_code: int | None, error: str | None) -> None:
    """The outcome of the job's `attempts`-th delivery."""
    await pool.execute(RECORD_ATTEMPT, job_id, *window(job_id), status, attempts, status_code, error)


async def signing_secret(pool: asyncpg.Pool, key_id: str) -> str | None:
    return await pool.fetchval(SIGNING_SECRET, key_id)


async def rotate_secret(pool: asyncpg.Pool, key_id: str, secret: str) -> bool:
    """Replace the key's webhook secret; False when there is no such key."""
    return await pool.fetchval(ROTATE_SECRET, key_id, secret) is not None


async def set_default_webhook(pool: asyncpg.Pool, key_id: str, url: str | None) -> bool:
    return await pool.fetchval(SET_DEFAULT_WEBHOOK, key_id, url) is not None
