"""Group commit: requests that need the same kind of write while one is in flight share the next one.

Each caller still waits for its own item's result (or the error of the write that carried it), so nothing is
answered before it is written; under load the database sees one statement per batch instead of one per request.
The dependency's circuit breaker guards the shared write once (one failed statement is one failure, however many
requests it carried); callers must not wrap `add` in that breaker again (they would count it once each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Generic, TypeVar

from shared.runtime.breaker import CircuitBreaker

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, write_many: Callable[[list[T]], Awaitable[list[R]]], batch_max: int,
                 breaker: CircuitBreaker | None = None) -> None:
        """`write_many(items)` writes a batch and returns one result per item, in order; `breaker` guards it."""
        self._write_many, self._batch_max, self._breaker = write_many, batch_max, breaker
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, item: T) -> R:
        """Write `item` with whatever else is waiting; returns its result once written. ServiceUnavailable at once
        while the breaker is open; the write's ServiceUnavailable (counted once by the breaker) when it failed."""
        if self._breaker is not None:
            self._breaker.refuse_if_open()
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        return await done

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self._batch_max], self._waiting[self._batch_max:]
                try:
                    async with self._guard():
                        results = await self._write_many([item for item, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for (_, done), result in zip(batch, results, strict=True):
                        if not done.done():
                            done.set_result(result)
        finally:
            self._writer = None

    def _guard(self) -> AbstractAsyncContextManager[Any]:
        return self._breaker if self._breaker is not None else nullcontext()
