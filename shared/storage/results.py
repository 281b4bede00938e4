"""Result objects: content-hashed keys (`results/sha256/<2>/<hash>/<filename>`), each written once per hash.

Two ways in: the uploader promotes a stage's staged file (server-side copy), and a fetcher that cut a clip with
nothing else to follow puts its local clip straight there. Either writes only when the key is missing, then ends
the job, then settles what it stored (`settle_result`): written again when the job is now done and the reaper
expired an identical result between the check and done (the job names it: it is live); deleted when the job had
ended another way meanwhile (canceled, failed) and no done job names it, so no object is left that nothing names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from shared.db import jobs
from shared.storage.s3 import Storage

CLIP_FILENAME = "clip.mp4"  # the clip's name under its content-hashed prefix


async def promote(storage: Storage, source_key: str, key: str, content_type: str) -> None:
    """Copy `source_key` to the result `key` server-side, unless it is there."""
    if await storage.head(key) is None:
        await storage.copy(source_key, key, content_type)


async def put_once(storage: Storage, path: Path, key: str, content_type: str, metadata: dict[str, str]) -> None:
    """Put the local file `path` at the result `key` with `metadata`, unless it is there."""
    if await storage.head(key) is None:
        await storage.put_file(key, path, content_type, metadata)


async def settle_result(storage: Storage, db: asyncpg.Pool, finished: bool, key: str, role: str,
                        store_again: Callable[[], Awaitable[None]]) -> None:
    """After the job's end was written (`finished`: it became done now), the result object at `key` (of `role`)
    that the stage stored before: stored again (`store_again`, a write-once) when the job is done, since the reaper
    may have expired an identical result in between; deleted when the job ended another way first (canceled or
    failed meanwhile) unless a done job names the key (an identical result of another job). Another job between
    its own check and done that loses the object this way stores it again after its done, by this same rule."""
    if finished:
        await store_again()
    elif not await jobs.result_key_in_use(db, key, role):
        await storage.delete(key)
