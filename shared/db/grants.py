"""Least privilege for the services: `clipjet init` grants DB_APP_ROLE what the services do, and no DDL.

The role (made by the database's administrator, with its own login or as a group of the services' logins) gets
USAGE on clipjet's schema (not CREATE), SELECT/INSERT/UPDATE/DELETE on its tables, use of its sequences and
EXECUTE on its functions: the partition functions among them run as their owner (migration 017), so the reaper
keeps creating and dropping daily partitions without owning any table. Default privileges give it the same on
the partitions those functions create later."""

from __future__ import annotations

import asyncpg

from shared.runtime.logs import get_logger

log = get_logger("init")

ROLE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)"


def quote_ident(name: str) -> str:
    """`name` as a PostgreSQL identifier (double quotes, inner ones doubled)."""
    return '"' + name.replace('"', '""') + '"'


def grant_statements(schema: str, role: str) -> list[str]:
    """The GRANTs (and default privileges) that let `role` run every service on `schema`, and no more."""
    s, r = quote_ident(schema), quote_ident(role)
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT EXECUTE ON FUNCTIONS TO {r}",
    ]


async def grant_app_role(conn: asyncpg.Connection, schema: str, role: str) -> None:
    """Grant `role` the services' rights on `schema` (idempotent); ValueError when the role does not exist."""
    if not await conn.fetchval(ROLE_EXISTS, role):
        raise ValueError(f"DB_APP_ROLE {role!r} does not exist: create it first (CREATE ROLE ... LOGIN, or a group "
                         "role granted to the services' logins)")
    async with conn.transaction():
        for statement in grant_statements(schema, role):
            await conn.execute(statement)
    log.info("db_app_role_granted", role=role, schema=schema)
