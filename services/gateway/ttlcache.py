"""A small per-process cache whose entries live a fixed time (least recently used first out when it is full)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl_sec: float, max_entries: int) -> None:
        self._ttl, self._max = ttl_sec, max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

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
