"""API key lookups remembered for KEY_CACHE_SEC per gateway process (found or not, least recently used first out)."""

from __future__ import annotations

import time
from collections import OrderedDict

import asyncpg

from shared.db import keys
from shared.runtime.breaker import CircuitBreaker

CACHE_MAX_KEYS = 10_000  # key lookups remembered per gateway process


class KeyCache:
    def __init__(self, ttl_sec: float) -> None:
        self._ttl = ttl_sec
        self._entries: OrderedDict[str, tuple[float, keys.ApiKey | None]] = OrderedDict()

    async def get(self, db: asyncpg.Pool, breaker: CircuitBreaker, key_id: str) -> keys.ApiKey | None:
        now = time.monotonic()
        hit = self._entries.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            self._entries.move_to_end(key_id)
            return hit[1]
        async with breaker:
            found = await keys.find_key(db, key_id)
        self._entries[key_id] = (now, found)
        self._entries.move_to_end(key_id)
        while len(self._entries) > CACHE_MAX_KEYS:
            self._entries.popitem(last=False)
        return found
