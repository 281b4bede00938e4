"""Start-up through an outage: a service started while NATS, PostgreSQL or S3 is down waits for it.

Each step of opening the process's clients (connect to NATS, find the streams and consumers, connect to
PostgreSQL and find its schema migrated, find the bucket) is tried again with exponential backoff, at most
STARTUP_RETRY_MAX_SEC between tries, logging `waiting_for_dependency` with the dependency's name each time,
until it succeeds or STARTUP_WAIT_SEC passed (then DependencyUnavailable, naming the dependency and the last error,
is raised and the process exits 1 with that one line for its supervisor to restart it). A SIGTERM meanwhile (the
`stop` event) ends the wait at once: StopRequested is raised and the process exits 0.
What `clipjet init` makes (services/init.py) and a service only looks for is waited for the same way: while it is
missing the service logs `waiting_for_init` saying "run `clipjet init`".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from shared.runtime.logs import get_logger
from shared.settings import Settings

log = get_logger("startup")
R = TypeVar("R")
FIRST_PAUSE_SEC = 0.25  # first wait after a failed start-up step, s (doubles up to STARTUP_RETRY_MAX_SEC)
ERROR_CHARS = 300  # the part of an error's text a log line carries

# Waiting does not mend these: wrong credentials or a database that does not exist.
NOT_AN_OUTAGE: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # bad user or password
    asyncpg.InvalidCatalogNameError,  # no such database
)
RUN_INIT = "run `clipjet init`"  # what a service waiting for init's work tells the operator


class DependencyUnavailable(RuntimeError):
    """A dependency stayed down for STARTUP_WAIT_SEC, or refused us for good (NOT_AN_OUTAGE); one line says which."""

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency}: {reason}")
        self.dependency = dependency


class StopRequested(Exception):  # not an error: the process was asked to stop while it waited
    """The process's stop event (SIGTERM, SIGINT) was set while it waited for a dependency."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"stopped while waiting for {dependency}")
        self.dependency = dependency


class NotInitialized(RuntimeError):
    """What `clipjet init` makes (a stream, a consumer, the schema's migrations, the bucket) is missing."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"{missing}: {RUN_INIT}")
        self.missing = missing


async def until_up(
    dependency: str, step: Callable[[], Awaitable[R]], settings: Settings, stop: asyncio.Event | None = None
) -> R:
    """`step()`'s result, trying again while it fails (see the module doc); `dependency` names what it needs.
    StopRequested once `stop` is set; DependencyUnavailable when giving up."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pause = FIRST_PAUSE_SEC
    tries = 0
    while True:
        tries += 1
        if stop is not None and stop.is_set():
            raise StopRequested(dependency)
        try:
            result = await step()
        except NOT_AN_OUTAGE as exc:
            log.error("dependency_refused", dependency=dependency, error=repr(exc)[:ERROR_CHARS])
            raise DependencyUnavailable(dependency, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]) from exc
        except Exception as exc:
            waited = loop.time() - started
            if settings.startup_wait_sec > 0 and waited + pause > settings.startup_wait_sec:
                log.error("dependency_unavailable", dependency=dependency, waited_sec=round(waited, 1),
                          tries=tries, error=repr(exc)[:ERROR_CHARS])
                raise DependencyUnavailable(dependency, f"unavailable after {waited:.0f} s ({tries} tries): "
                                            f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]) from exc
            if isinstance(exc, NotInitialized):
                log.warning("waiting_for_init", dependency=dependency, missing=exc.missing, message=RUN_INIT,
                            retry_in_sec=round(pause, 2), waited_sec=round(waited, 1))
            else:
                log.warning("waiting_for_dependency", dependency=dependency, retry_in_sec=round(pause, 2),
                            waited_sec=round(waited, 1), error=repr(exc)[:ERROR_CHARS])
            if await _stopped_within(stop, pause):
                log.info("stopped_while_waiting", dependency=dependency, waited_sec=round(loop.time() - started, 1))
                raise StopRequested(dependency) from exc
            pause = min(pause * 2, settings.startup_retry_max_sec)
            continue
        if tries > 1:
            log.info("dependency_up", dependency=dependency, waited_sec=round(loop.time() - started, 1))
        return result


async def _stopped_within(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait `seconds`, or less when `stop` is set; whether it was. (`asyncio.wait`, not `wait_for`: see
    shared/storage/scratch.py's report_loop on Python 3.11's wait_for swallowing a cancel.)"""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return stop.is_set()
