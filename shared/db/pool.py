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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection's reset when its users leave no session state behind (see `create_pool`)."""


async def create_pool(settings: Settings, *, migrate: bool = True, session_state: bool = True) -> asyncpg.Pool:
    """Open the pool; with `migrate`, apply migrations and make sure the next days' partitions exist.

    `session_state=False`: the process never leaves session state on a connection (no session advisory lock,
    LISTEN, SET or open cursor outside a transaction), so a released connection skips asyncpg's reset query
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`), a round trip on every release. An open
    transaction is still rolled back (asyncpg does that before any reset)."""
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
        reset=None if session_state else _keep_session,
    )
    assert pool is not None
    return pool

