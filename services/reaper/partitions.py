"""Daily partitions of `jobs`: create the next days' ahead of need, drop old ones nobody needs any more.

A partition `jobs_YYYYMMDD` (attached to `jobs` in the current schema; nothing else is ever touched) is dropped
once its day ended more than RETENTION_HOURS + 1 day ago and none of its rows needs the reaper any more: no job
is queued, processing or done (a done job still has a live result, or is about to expire), and every ended
job's staging is cleaned. The drop holds `jobs` exclusively for milliseconds; it gives up after
PARTITION_LOCK_TIMEOUT_MS rather than stall the service behind a long query, and tries again next pass.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg

from shared.db.pool import ENSURE_PARTITIONS
from shared.runtime.logs import get_logger

log = get_logger("reaper")

PARTITION_NAME = re.compile(r"jobs_(\d{8})")  # the daily partitions ensure_job_partitions() creates
PARTITION_DAY = timedelta(days=1)
EXTRA_KEEP = timedelta(days=1)  # kept this long past RETENTION_HOURS after their day ended
PARTITION_LOCK_TIMEOUT_MS = 500  # longest the drop waits for its lock on `jobs`, ms

LIST_PARTITIONS = """
SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(quote_ident(current_schema()) || '.jobs')
  AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
  AND c.relname ~ '^jobs_[0-9]{8}$'
ORDER BY c.relname
"""
NOW = "SELECT now()"
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
# Parent first: every query on jobs locks it before a partition, so this order cannot deadlock.
LOCK_JOBS = "LOCK TABLE ONLY jobs IN ACCESS EXCLUSIVE MODE"
# {table} is a name checked against PARTITION_NAME and found attached to jobs (see _partition_table).
STILL_NEEDED = """
SELECT EXISTS (
    SELECT 1 FROM {table} WHERE status IN ('queued', 'processing', 'done') OR staging_cleaned_at IS NULL
)
"""
DROP_PARTITION = "SELECT drop_job_partition($1)"  # as its owner (migration 017): the reaper owns no table


def partition_day(name: str) -> datetime | None:
    """The UTC day a `jobs_YYYYMMDD` partition holds, or None for any other name (or an impossible date)."""
    match = PARTITION_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def _partition_table(name: str) -> str:
    """The quoted identifier of a validated partition name (letters, digits and `_` only)."""
    if partition_day(name) is None:
        raise ValueError(f"not a daily jobs partition: {name!r}")
    return f'"{name}"'


async def ensure_partitions(pool: asyncpg.Pool, days_ahead: int) -> int:
    """Create today's and the next `days_ahead` days' partitions; how many were new."""
    return int(await pool.fetchval(ENSURE_PARTITIONS, days_ahead))


async def drop_old_partitions(pool: asyncpg.Pool, retention_hours: float) -> list[str]:
    """Drop the daily partitions past retention that hold nothing the reaper still needs; their names."""
    async with pool.acquire() as conn:
        now: datetime = await conn.fetchval(NOW)
        cutoff = now - timedelta(hours=retention_hours) - EXTRA_KEEP
        dropped = []
        for row in await conn.fetch(LIST_PARTITIONS):
            day = partition_day(row["name"])
            if day is not None and day + PARTITION_DAY < cutoff and await _drop_if_unneeded(conn, row["name"]):
                dropped.append(row["name"])
        return dropped


async def _drop_if_unneeded(conn: asyncpg.Connection, name: str) -> bool:
    table = _partition_table(name)
    try:
        async with conn.transaction():
            await conn.execute(SET_LOCK_TIMEOUT, f"{PARTITION_LOCK_TIMEOUT_MS}ms")
            await conn.execute(LOCK_JOBS)
            if await conn.fetchval(STILL_NEEDED.format(table=table)):
                return False
            await conn.execute(DROP_PARTITION, name)
    except asyncpg.LockNotAvailableError:
        log.warning("partition_drop_postponed", partition=name, reason="jobs is busy")
        return False
    log.info("partition_dropped", partition=name)
    return True
