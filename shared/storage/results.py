"""Result objects: content-hashed keys (`results/sha256/<2>/<hash>/<filename>`), each written once per hash.

Two ways in: the uploader promotes a stage's staged file (server-side copy), and a fetcher that cut a plain copy
with nothing else to follow puts its local clip straight there (`shared.jobs.finish`). Either writes only when
the key is missing, and writes again after the job is done when the reaper expired an identical result between
the check and done (the job now names it: it is live).
"""

from __future__ import annotations

from pathlib import Path

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
