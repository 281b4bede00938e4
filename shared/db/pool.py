"""The asyncpg pool: one per process, search_path set to clipjet's schema, jsonb as Python objects."""

from __future__ import annotations

import asyncpg
import msgspec

from shared.db.migrate import apply_migrations
from shared.settings import Settings

ENSURE_PARTITIONS = "SELECT ensure_job_partitions($1)"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=lambda v: msgspec.json.encode(v).decode(), decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def create_pool(settings: Settings, *, migrate: bool = True) -> asyncpg.Pool:
    """Open the pool; with `migrate`, apply migrations and make sure the next days' partitions exist."""
    if migrate:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await apply_migrations(conn, settings.db_schema)
            await conn.execute(ENSURE_PARTITIONS, settings.partition_days_ahead)
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        server_settings={"search_path": settings.db_schema},
        init=_init_connection,
    )
    assert pool is not None
    return pool

