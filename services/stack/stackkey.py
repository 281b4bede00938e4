"""The local stack's API key: made once per data folder, kept in it (mode 0600), and handed to the demo and to
``.data/stack.env`` as ``CLIPJET_API_KEY`` (what the README's curl examples use)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.keyscmd import create_key
from shared.db import keys
from shared.db.pool import create_pool
from shared.jobs.apikeys import secret_matches, split_token
from shared.jobs.contracts import PRIORITIES
from shared.settings import Settings

KEY_FILE = "stack-api-key"
KEY_FILE_MODE = 0o600
KEY_NAME = "local stack (make run)"
ENV_NAME = "CLIPJET_API_KEY"


async def _still_valid(settings: Settings, token: str) -> bool:
    parts = split_token(token)
    if parts is None:
        return False
    pool = await create_pool(settings)
    try:
        found = await keys.find_key(pool, parts[0])
    finally:
        await pool.close()
    return found is not None and found.revoked_at is None and secret_matches(parts[1], found.secret_sha256)


def stack_api_key(settings: Settings, data_dir: Path) -> str:
    """The data folder's admin key (every priority): the one it kept while still valid, else a new one."""
    path = data_dir / KEY_FILE
    token = path.read_text().strip() if path.exists() else ""
    if token and asyncio.run(_still_valid(settings, token)):
        return token
    token, _ = asyncio.run(create_key(settings, KEY_NAME, admin=True, priorities=",".join(PRIORITIES)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), KEY_FILE_MODE)
        out.write(token + "\n")
    return token
