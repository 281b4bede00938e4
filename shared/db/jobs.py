"""Job rows and their append-only events. Every lookup carries the id's time window, so it prunes to a partition.

A UUIDv7 id gives its row's created_at exactly; other UUIDs (allowed for systems publishing straight to
NATS) are stored at their arrival time and looked up across partitions.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from shared.jobs.contracts import ClipJobMessage, ClipResult
from shared.jobs.ids import created_at_of
from shared.runtime.scrub import scrub, scrub_value

SHARDS = 64  # shard = crc32(id) % SHARDS, stored for locality
TERMINAL = ("done", "failed", "expired", "canceled")
NOT_ENDED = "status NOT IN ('done', 'failed', 'expired', 'canceled')"  # TERMINAL as SQL: a job still under way
_FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# Result roles the release before `result_keys` (018) kept in columns of their own. COMPLETE still writes them and
# every reader falls back to them, while replicas of that release may run beside this one (a rolling upgrade):
# the old reader sees the new rows' subtitles, the new reader the old rows'. A later release drops them.
LEGACY_KEY_COLUMNS = {"srt": "result_srt_key", "vtt": "result_vtt_key", "words": "result_words_key"}

INSERT_JOB = """
INSERT INTO jobs (id, created_at, priority, shard, request, status, owner)
SELECT $1, $2, $3, $4, $5, 'queued', $8
WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND created_at >= $6 AND created_at < $7)
RETURNING id
"""
INSERT_EVENT = "INSERT INTO job_events (job_id, type, data) VALUES ($1, $2, $3)"
SELECT_JOB = "SELECT * FROM jobs WHERE id = $1 AND created_at >= $2 AND created_at < $3"
# Many at once ($2, $3: the union of their windows, so a batch of new jobs reads one day's partition).
BEGIN_STAGE = f"""
UPDATE jobs SET status = 'processing', stage = $4, attempts = GREATEST(attempts, $5),
       last_heartbeat_at = now(), updated_at = now(), error_code = NULL, error_message = NULL
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND {NOT_ENDED}
RETURNING status
"""
STATUS_OF = "SELECT status FROM jobs WHERE id = $1 AND created_at >= $2 AND created_at < $3"
HEARTBEAT = """
UPDATE jobs SET progress = GREATEST(progress, $4), stage = $5, last_heartbeat_at = now(), updated_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND status = 'processing'
RETURNING status
"""
# Also the subtitle roles' own columns (LEGACY_KEY_COLUMNS), which the previous release reads, for one release.
COMPLETE = f"""
UPDATE jobs SET status = 'done', progress = 1, stage = NULL, result = $4, result_video_key = $5,
       result_keys = $7::jsonb, result_srt_key = $7::jsonb->>'srt', result_vtt_key = $7::jsonb->>'vtt',
       result_words_key = $7::jsonb->>'words', expires_at = now() + make_interval(secs => $6), updated_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND {NOT_ENDED}
RETURNING id, request->'metadata' AS metadata
"""
FAIL = f"""
UPDATE jobs SET status = 'failed', error_code = $4, error_message = $5, updated_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND {NOT_ENDED}
RETURNING id, request->'metadata' AS metadata
"""
REQUEUE = f"""
UPDATE jobs SET status = 'queued', error_code = $4, error_message = $5, updated_at = now()
WHERE id = $1 AND created_at >= $2 AND created_at < $3 AND {NOT_ENDED}
RETURNING id
"""
# A caller's jobs newest first, keyset-paginated by (created_at, id); $1 NULL: everyone's (admin, AUTH=off).
LIST_JOBS = """
SELECT * FROM jobs
WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
EVENTS_OF = "SELECT ts, type, data FROM job_events WHERE job_id = $1 ORDER BY ts, id"

# --- the reaper's scans (services/reaper), each bounded by a batch size; their indexes are in 002_reaper.sql
OUTBOX_DUE = """
SELECT id, created_at, request FROM jobs j
WHERE status = 'queued' AND published_at IS NULL AND created_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = j.id AND e.type = 'stage_started')
ORDER BY created_at LIMIT $2
"""
MARK_REPUBLISHED = """
UPDATE jobs SET published_at = now() WHERE id = $1 AND created_at = $2 AND published_at IS NULL RETURNING id
"""
EXPIRY_DUE = """
SELECT id, created_at, result_video_key, result_keys, result_srt_key, result_vtt_key, result_words_key FROM jobs
WHERE status = 'done' AND expires_at < now() ORDER BY expires_at LIMIT $1
"""
EXPIRE = """
UPDATE jobs SET status = 'expired', updated_at = now()
WHERE id = $1 AND created_at = $2 AND status = 'done' AND expires_at < now()
RETURNING id
"""
# A live result: a done job not yet past its expiry names the key (content-hashed keys are shared) for the
# role $2 (result_keys' index, 018_result_keys.sql, answers `@>`), or in a subtitle column (LEGACY_KEY_COLUMNS: a
# row the previous release completed has only those; their indexes are in 002 and 005).
RESULT_KEY_IN_USE = """
SELECT EXISTS (
    SELECT 1 FROM jobs WHERE status = 'done'
      AND (result_video_key = $1 OR result_keys @> jsonb_build_object($2::text, $1::text)
           OR result_srt_key = $1 OR result_vtt_key = $1 OR result_words_key = $1)
      AND (expires_at IS NULL OR expires_at >= now())
)
"""
STAGING_DUE = """
SELECT id, created_at FROM jobs
WHERE staging_cleaned_at IS NULL AND status IN ('done', 'failed', 'expired', 'canceled')
ORDER BY created_at LIMIT $1
"""
MARK_STAGING_CLEANED = "UPDATE jobs SET staging_cleaned_at = now() WHERE id = $1 AND created_at = $2"
# Processing and silent for $1 s, unless the last event is a stage_finished younger than $2 s: then the next
# stage's message waits in its queue (published before stage_finished was written), and no worker is late.
STUCK_DUE = """
SELECT id, stage, extract(epoch FROM now() - last_heartbeat_at)::float8 AS silent_sec FROM jobs j
WHERE status = 'processing' AND last_heartbeat_at < now() - make_interval(secs => $1)
  AND (last_heartbeat_at < now() - make_interval(secs => $2)
       OR (SELECT e.type FROM job_events e WHERE e.job_id = j.id ORDER BY e.ts DESC, e.id DESC LIMIT 1)
          IS DISTINCT FROM 'stage_finished')
ORDER BY last_heartbeat_at LIMIT $3
"""
LAST_STAGE_EVENT = """
SELECT type, data FROM job_events
WHERE job_id = $1 AND type IN ('stage_started', 'stage_finished', 'message_republished')
ORDER BY ts DESC, id DESC LIMIT 1
"""


@dataclass(frozen=True)
class Ended:
    """A job this call ended; `metadata` is its request's (the client's reference, for the end event)."""

    metadata: dict[str, Any] | None


def window(job_id: uuid.UUID) -> tuple[datetime, datetime]:
    """The created_at range a job's row can be in: one millisecond for UUIDv7, everything otherwise."""
    created = created_at_of(job_id)
    if created is None:
        return _FAR_PAST, _FAR_FUTURE
    return created, created + _ONE_MS


def shard_of(job_id: uuid.UUID) -> int:
    return zlib.crc32(job_id.bytes) % SHARDS


def plain(value: Any) -> Any:
    """A contract as the builtins its jsonb column stores."""
    return msgspec.to_builtins(value)


async def insert_job(conn: asyncpg.Connection, job: ClipJobMessage) -> bool:
    """Write a queued job row (and its `queued` event) unless one exists; True when it was written."""
    job_id = uuid.UUID(job.id)
    created = created_at_of(job_id) or datetime.now(UTC)
    low, high = window(job_id)
    async with conn.transaction():
        row = await conn.fetchrow(
            INSERT_JOB, job_id, created, job.priority, shard_of(job_id), plain(job), low, high, job.owner
        )
        if row is None:
            return False
        await conn.execute(INSERT_EVENT, job_id, "queued", {"priority": job.priority})
        return True


async def get_job(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(SELECT_JOB, job_id, *window(job_id))


async def list_jobs(
    pool: asyncpg.Pool, owner: str | None, status: str | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """Jobs of `owner` (None: all), newest first, after the keyset position `after` (created_at, id)."""
    created, job_id = after if after is not None else (None, None)
    return await pool.fetch(LIST_JOBS, owner, status, created, job_id, limit)


async def job_events(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(EVENTS_OF, job_id)


async def begin_stage(
    pool: asyncpg.Pool, job: ClipJobMessage, stage: str, attempt: int, seq: int | None = None
) -> str:
    """Mark the job processing in `stage`; returns the job's status (a terminal one means: skip the work).

    `seq` is the message's stream sequence, kept in the `stage_started` event so the reaper can tell whether
    the message still exists. A job published straight to NATS has no row yet: it is created here.
    """
    job_id = uuid.UUID(job.id)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(BEGIN_STAGE, job_id, *window(job_id), stage, attempt)
        if row is not None:
            data: dict[str, Any] = {"stage": stage, "attempt": attempt}
            if seq is not None:
                data["seq"] = seq
            await conn.execute(INSERT_EVENT, job_id, "stage_started", data)
            return "processing"
        status = await conn.fetchval(STATUS_OF, job_id, *window(job_id))
        if status is not None:
            return str(status)
        await insert_job(conn, job)
    return await begin_stage(pool, job, stage, attempt, seq)


async def heartbeat(pool: asyncpg.Pool, job_id: uuid.UUID, stage: str, progress: float) -> str | None:
    """Write a sign of life; the job's status ("processing", or what it became meanwhile, e.g. canceled)."""
    status = await pool.fetchval(HEARTBEAT, job_id, *window(job_id), progress, stage)
    return str(status) if status is not None else await pool.fetchval(STATUS_OF, job_id, *window(job_id))


async def record_event(pool: asyncpg.Pool, job_id: uuid.UUID, type_: str, data: dict[str, Any]) -> None:
    """Append an event; its data is scrubbed (`shared.runtime.scrub`): events are shown to users."""
    await pool.execute(INSERT_EVENT, job_id, type_, scrub_value(data))


async def complete(
    pool: asyncpg.Pool, job_id: uuid.UUID, result: ClipResult, video_key: str, retention_sec: float,
    files: dict[str, str] | None = None,
) -> Ended | None:
    """Job → done with its result, its clip's key and its other result files' keys by role (once: None when it
    had already ended)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            COMPLETE, job_id, *window(job_id), plain(result), video_key, retention_sec, files or {}
        )
        if row is None:
            return None
        await conn.execute(INSERT_EVENT, job_id, "done", {"videoKey": video_key})
        return Ended(row["metadata"])


async def fail(pool: asyncpg.Pool, job_id: uuid.UUID, code: str, message: str) -> Ended | None:
    """Job → failed with a code (once: None when it had already ended); the message is scrubbed."""
    message = scrub(message)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(FAIL, job_id, *window(job_id), code, message)
        if row is None:
            return None
        await conn.execute(INSERT_EVENT, job_id, "failed", {"code": code, "message": message})
        return Ended(row["metadata"])


async def requeue(
    pool: asyncpg.Pool, job_id: uuid.UUID, code: str, message: str, attempt: int, delay_sec: float
) -> None:
    """A transient failure: the job goes back to queued and will be retried after `delay_sec` (the message is
    scrubbed)."""
    message = scrub(message)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(REQUEUE, job_id, *window(job_id), code, message)
        if row is not None:
            await conn.execute(
                INSERT_EVENT, job_id, "retry",
                {"code": code, "message": message, "attempt": attempt, "delaySec": delay_sec},
            )


# --------------------------------------------------------------------------------------------- the reaper


async def outbox_due(pool: asyncpg.Pool, grace_sec: float, limit: int) -> list[asyncpg.Record]:
    """Queued rows never published and older than `grace_sec`, that no stage has taken (id, created_at, request)."""
    return await pool.fetch(OUTBOX_DUE, grace_sec, limit)


async def mark_republished(pool: asyncpg.Pool, job_id: uuid.UUID, created_at: datetime, subject: str) -> bool:
    """The reaper published the row: set published_at and write a `republished` event (once)."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(MARK_REPUBLISHED, job_id, created_at) is None:
            return False
        await conn.execute(INSERT_EVENT, job_id, "republished", {"subject": subject})
        return True


async def expiry_due(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Done jobs past expires_at (id, created_at and their result keys), the longest expired first."""
    return await pool.fetch(EXPIRY_DUE, limit)


async def expire(pool: asyncpg.Pool, job_id: uuid.UUID, created_at: datetime) -> bool:
    """Job done → expired with an `expired` event (once: False when it is not a done, past-expiry job)."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(EXPIRE, job_id, created_at) is None:
            return False
        await conn.execute(INSERT_EVENT, job_id, "expired", {})
        return True


def role_keys(row: Any) -> dict[str, str]:
    """A done job row's result keys by role, the clip's aside: `result_keys`, over the subtitle columns for a row
    the previous release completed (it wrote only those)."""
    legacy = {role: row[column] for role, column in LEGACY_KEY_COLUMNS.items() if row[column]}
    return {**legacy, **(row["result_keys"] or {})}


def result_files(row: Any) -> dict[str, str]:
    """A done job row's result keys by role: the clip's (`video`) and every other result file's."""
    return {"video": row["result_video_key"], **role_keys(row)}


async def result_key_in_use(pool: asyncpg.Pool, key: str, role: str) -> bool:
    """Whether a done job not yet past its expiry names this (content-hashed, shareable) result key."""
    return bool(await pool.fetchval(RESULT_KEY_IN_USE, key, role))


async def staging_due(pool: asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Ended jobs whose staging objects were not deleted yet (id, created_at)."""
    return await pool.fetch(STAGING_DUE, limit)


async def mark_staging_cleaned(pool: asyncpg.Pool, job_id: uuid.UUID, created_at: datetime) -> None:
    await pool.execute(MARK_STAGING_CLEANED, job_id, created_at)


async def stuck_due(
    pool: asyncpg.Pool, silent_sec: float, queue_wait_sec: float, limit: int
) -> list[asyncpg.Record]:
    """Processing jobs whose worker went silent over `silent_sec` ago (id, stage, silent_sec); see STUCK_DUE."""
    return await pool.fetch(STUCK_DUE, silent_sec, queue_wait_sec, limit)


async def last_stage_event(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    """The job's latest stage_started, stage_finished or message_republished event (type, data), whose data may
    carry the stream seq of the job's current message."""
    return await pool.fetchrow(LAST_STAGE_EVENT, job_id)
