"""A small per-process cache whose entries live a fixed time (least recently used first out when it is full)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_sec: float, max_entries: int) -> None:
        self._ttl, self._max = ttl_sec, max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    def get(self, key: K) -> tuple[float, V] | None:
        """(age in seconds, value) of a live entry, else None."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        age = time.monotonic() - hit[0]
        if age >= self._ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return age, hit[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The live entry's value, else `load()`'s, kept unless None. Callers that miss the same key while it is
        being loaded wait for that one load (when an entry expires under load, one lookup refreshes it, not one
        per request in flight)."""
        hit = self.get(key)
        if hit is not None:
            return hit[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(loading)  # a caller that gives up does not cancel the others' load

    async def _load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        value = await load()
        if value is not None:
            self.put(key, value)
        return value
