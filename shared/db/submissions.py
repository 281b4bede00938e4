"""A new job's row in one round trip: `submit_job` (migration 013) checks the Idempotency-Key, the key's quotas
(under its per-key lock), claims the key and writes the row and its `queued` event, in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from shared.db import jobs
from shared.db.idempotency import Earlier
from shared.db.keys import Quotas
from shared.jobs.contracts import ClipJobMessage
from shared.jobs.ids import created_at_of

SUBMIT_JOB = "SELECT outcome, job_id, request_sha256 FROM submit_job($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, " \
             "$12, $13, $14, $15)"
INSERTED, REPLAY = "inserted", "replay"


@dataclass(frozen=True)
class IdempotencyClaim:
    """The caller's Idempotency-Key (`owner`: the API key id, "" without auth) and the request's hash."""

    owner: str
    key: str
    request_sha256: str


@dataclass(frozen=True)
class Submitted:
    """`outcome`: "inserted"; "replay" (`earlier` is the key's first request); or the quota the job would exceed."""

    outcome: str
    earlier: Earlier | None = None


async def submit(
    pool: asyncpg.Pool, job: ClipJobMessage, claim: IdempotencyClaim | None, quotas: Quotas | None
) -> Submitted:
    """Write `job` unless its Idempotency-Key was used before or its owner is at a quota (`quotas` None: none)."""
    job_id = uuid.UUID(job.id)
    created = created_at_of(job_id) or datetime.now(UTC)
    low, high = jobs.window(job_id)
    checked = quotas if job.owner is not None else None
    row = await pool.fetchrow(
        SUBMIT_JOB, job_id, created, job.priority, jobs.shard_of(job_id), jobs.plain(job), job.owner, low, high,
        claim.key if claim else None, claim.owner if claim else None, claim.request_sha256 if claim else None,
        checked.max_in_flight if checked else None, checked.max_jobs_per_day if checked else None,
        checked.max_source_seconds_per_day if checked else None, job.end_sec - job.start_sec,
    )
    assert row is not None
    if row["outcome"] == REPLAY:
        return Submitted(REPLAY, Earlier(row["request_sha256"], row["job_id"]))
    return Submitted(row["outcome"])
