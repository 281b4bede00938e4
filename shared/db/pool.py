"""The asyncpg pool: one per process, search_path set to clipjet's schema, jsonb as Python objects.

Services never change the schema: `clipjet init` migrates it (services/init.py); a pool is only opened once every
migration this code knows has been applied (NotInitialized until then, which start-up waits for)."""

from __future__ import annotations

import asyncpg
import msgspec

from shared.db.migrate import migration_files
from shared.runtime.startup import NotInitialized
from shared.settings import Settings

ENSURE_PARTITIONS = "SELECT ensure_job_partitions($1)"
APPLIED = "SELECT name FROM schema_migrations"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=lambda v: msgspec.json.encode(v).decode(), decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def require_migrated(conn: asyncpg.Connection, schema: str) -> None:
    """NotInitialized unless every migration of this code is recorded in `schema` (a newer one may be too)."""
    try:
        done = {row["name"] for row in await conn.fetch(APPLIED)}
    except asyncpg.UndefinedTableError:  # no schema_migrations in the search path: the schema was never migrated
        raise NotInitialized(f"PostgreSQL schema {schema!r} is not migrated") from None
    if missing := [name for name, _ in migration_files() if name not in done]:
        raise NotInitialized(f"PostgreSQL schema {schema!r} lacks migrations {', '.join(missing)}")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection's reset when its users leave no session state behind (see `create_pool`)."""


async def create_pool(settings: Settings, *, check_migrated: bool = True, session_state: bool = True) -> asyncpg.Pool:
    """Open the pool; with `check_migrated`, NotInitialized while the schema lacks a migration.

    `session_state=False`: the process never leaves session state on a connection (no session advisory lock,
    LISTEN, SET or open cursor outside a transaction), so a released connection skips asyncpg's reset query
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`), a round trip on every release. An open
    transaction is still rolled back (asyncpg does that before any reset)."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        server_settings={"search_path": settings.db_schema},
        init=_init_connection,
        reset=None if session_state else _keep_session,
    )
    assert pool is not None
    if check_migrated:
        try:
            async with pool.acquire() as conn:
                await require_migrated(conn, settings.db_schema)
        except BaseException:
            await pool.close()
            raise
    return pool
