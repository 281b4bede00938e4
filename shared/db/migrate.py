"""Plain ordered SQL migrations, applied at start-up under an advisory lock (safe with many replicas)."""

from __future__ import annotations

from importlib import resources

import asyncpg

from shared.runtime.logs import get_logger

log = get_logger("migrate")

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
LOCK = "SELECT pg_advisory_lock(hashtext('clipjet-migrate:' || current_schema()))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('clipjet-migrate:' || current_schema()))"
APPLIED = "SELECT name FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (name) VALUES ($1)"


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in name order."""
    folder = resources.files("shared.db") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text()) for f in files]


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Create `schema` if needed and apply the migrations it lacks; returns the names applied."""
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{_ident(schema)}"')
    await conn.execute(f'SET search_path TO "{_ident(schema)}"')
    await conn.execute(LOCK)
    try:
        await conn.execute(CREATE_LEDGER)
        done = {row["name"] for row in await conn.fetch(APPLIED)}
        applied = []
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(RECORD, name)
            applied.append(name)
            log.info("migration_applied", name=name, schema=schema)
        return applied
    finally:
        await conn.execute(UNLOCK)


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"schema name must be letters, digits and underscores: {name!r}")
    return name
