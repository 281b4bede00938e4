"""The process's long-lived clients, opened once in a lifespan and handed to handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from shared.db.pool import create_pool
from shared.runtime import bus
from shared.runtime.scrub import remember_secrets
from shared.runtime.startup import until_up
from shared.settings import Settings
from shared.storage.s3 import Storage, open_storage


@dataclass
class Resources:
    settings: Settings
    nc: NatsClient
    js: JetStreamContext
    db: asyncpg.Pool
    storage: Storage
    subjects: bus.Subjects


NO_SESSION_STATE = frozenset({"gateway"})  # processes whose database sessions hold no state between uses


@asynccontextmanager
async def open_resources(
    settings: Settings, name: str, stop: asyncio.Event | None = None
) -> AsyncIterator[Resources]:
    """NATS (its streams found), PostgreSQL (its schema found migrated) and S3 (its bucket found); each waited
    for while it is down or while what `clipjet init` makes is missing, until `stop` is set (shared/runtime/startup.py).
    Nothing is created."""
    remember_secrets(settings.s3_secret_key, settings.database_url)  # scrubbed from what users and logs see
    nc = await until_up("nats", lambda: bus.connect(settings, name), settings, stop)
    try:
        js = nc.jetstream()
        await until_up("nats_jetstream", lambda: bus.require_streams(js, settings), settings, stop)
        pool = await until_up(
            "postgresql", lambda: create_pool(settings, session_state=name not in NO_SESSION_STATE), settings, stop)
        try:
            async with open_storage(settings) as storage:
                await until_up("s3", storage.require_bucket, settings, stop)
                yield Resources(settings, nc, js, pool, storage, bus.Subjects(settings.subject_prefix))
        finally:
            await pool.close()
    finally:
        await nc.drain()
