"""`clipjet init`: make what the services expect and never make themselves, then exit (0 when all is in place).

* PostgreSQL (INIT_DATABASE_URL, a role with DDL rights; default DATABASE_URL): the schema's migrations, today's
  and the next PARTITION_DAYS_AHEAD days' `jobs` partitions, and with DB_APP_ROLE that role's grants (DML, no DDL:
  shared/db/grants.py).
* NATS: the work-queue, end events' and webhook retries' streams and every durable consumer, created when
  missing. Existing ones are left as they are (replicas, max_bytes, max_age, ... are the operator's), except that
  subjects a new stage needs are added; `--update-streams` sets clipjet's own fields (shared/runtime/bus.py
  CLIPJET_STREAM_FIELDS, and the consumers' configs) explicitly.
* S3: the bucket, created when missing, and its CORS when S3_CORS_ORIGINS names the web page's origins.

Idempotent: a second run changes nothing. Each dependency is waited for like a service's start-up (until_up,
STARTUP_WAIT_SEC); one that stays unreachable, or refuses what init asks, ends it with InitFailed.
"""

from __future__ import annotations

import asyncpg
from botocore.exceptions import ClientError

from shared.db.grants import grant_app_role
from shared.db.migrate import apply_migrations
from shared.db.pool import ENSURE_PARTITIONS
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.scrub import remember_secrets
from shared.runtime.startup import until_up
from shared.settings import Settings
from shared.storage.s3 import CORS_MAX_AGE_SEC, cors_origins, open_storage

log = get_logger("init")


class InitFailed(RuntimeError):
    """A dependency stayed unreachable, or refused what init asked of it."""


async def init_database(settings: Settings) -> list[str]:
    url = settings.init_database_url or settings.database_url
    conn = await until_up("postgresql", lambda: asyncpg.connect(url), settings)
    try:
        applied = await apply_migrations(conn, settings.db_schema)  # leaves search_path on the schema
        created = await conn.fetchval(ENSURE_PARTITIONS, settings.partition_days_ahead)
        lines = [f"schema {settings.db_schema}: {len(applied)} migration(s) applied",
                 f"partitions of jobs: {created} created"]
        if settings.db_app_role:
            await grant_app_role(conn, settings.db_schema, settings.db_app_role)
            lines.append(f"role {settings.db_app_role}: granted DML on schema {settings.db_schema}")
        return lines
    finally:
        await conn.close()


async def init_nats(settings: Settings, *, update_streams: bool) -> list[str]:
    nc = await until_up("nats", lambda: bus.connect(settings, "clipjet-init"), settings)
    try:
        js = nc.jetstream()
        await until_up("nats_jetstream", js.account_info, settings)  # JetStream answers (a cluster may be electing)
        return await bus.ensure_topology(js, settings, update=update_streams)
    finally:
        await nc.close()


async def init_storage(settings: Settings) -> list[str]:
    async with open_storage(settings) as storage:
        created = await until_up("s3", storage.ensure_bucket, settings)
        lines = [f"bucket {settings.s3_bucket}: {bus.CREATED if created else bus.KEPT}"]
        if origins := cors_origins(settings.s3_cors_origins):
            try:
                await storage.allow_browser_origins(origins, CORS_MAX_AGE_SEC)
            except ClientError as exc:  # a store or a token without PutBucketCors: the rest works, the page's
                code = exc.response.get("Error", {}).get("Code", "")  # uploads need the rule set by hand
                log.warning("bucket_cors_refused", origins=origins, code=code)
                lines.append(f"bucket CORS: refused by object storage ({code}); allow {', '.join(origins)} "
                             "in the store's console (STORAGE.md)")
            else:
                lines.append(f"bucket CORS: {', '.join(origins)}")
        return lines


async def run_init(settings: Settings, *, update_streams: bool = False, database_only: bool = False) -> list[str]:
    """Migrate, make the streams and consumers, make the bucket (`database_only`: migrate only); one line per thing
    done or found. InitFailed (naming the dependency) when one stays unreachable or refuses."""
    remember_secrets(settings.s3_secret_key, settings.init_database_url or settings.database_url)
    lines: list[str] = []
    steps = (("postgresql", lambda: init_database(settings)),
             ("nats", lambda: init_nats(settings, update_streams=update_streams)),
             ("s3", lambda: init_storage(settings)))
    for dependency, step in steps[:1] if database_only else steps:
        try:
            lines += await step()
        except Exception as exc:  # whatever it is, init stops here with the dependency named
            log.error("init_failed", dependency=dependency, error=repr(exc)[:300])
            raise InitFailed(f"{dependency}: {type(exc).__name__}: {exc}") from exc
    log.info("init_done", update_streams=update_streams)
    return lines
