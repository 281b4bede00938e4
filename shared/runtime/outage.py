"""Outages of the runtime's own servers (PostgreSQL, NATS): nobody's fault, so they must not spend a job's attempts.

A worker that cannot reach PostgreSQL or NATS holds its message (`in_progress()` keeps it from being redelivered)
and runs the stage again on the same delivery once they answer. Only past OUTAGE_WAIT_SEC does it hand the message
back, which spends a delivery. Stages are idempotent, so running one again after an outage is safe.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

FIRST_PAUSE_SEC = 0.25  # first wait before the stage runs again after an outage error, s (doubles)
MAX_PAUSE_SEC = 2.0  # longest single wait between two tries, s

# Errors that say "PostgreSQL or NATS is not answering right now", not "this job is wrong".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # connection lost or refused mid-query (08xxx)
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,  # terminated by a fast shutdown
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,  # "connection is closed" on a pooled connection the server dropped
    asyncpg.InternalClientError,  # "cannot switch to state …": a pooled connection broken mid-operation
    ConnectionRefusedError,  # a new connection while the server is down
    ConnectionResetError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,  # JetStream not (yet) there after a server restart
    nats.errors.TimeoutError,  # a JetStream API call or publish got no answer
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,  # JetStream answered 503 while recovering
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a PostgreSQL or NATS outage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OUTAGE_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def hold(msg: Msg, seconds: float, beat_sec: float) -> None:
    """Wait `seconds`, telling JetStream every `beat_sec` that the message is still being worked on."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        with suppress(Exception):  # NATS may be the one down: the client buffers it until it reconnects
            await msg.in_progress()
        await asyncio.sleep(min(beat_sec, left))


class OutageBudget:
    """How long one message may be held through outages, and the growing pause between tries."""

    def __init__(self, limit_sec: float) -> None:
        self.limit_sec = limit_sec
        self.waited_sec = 0.0
        self._pause = FIRST_PAUSE_SEC

    def next_pause(self) -> float | None:
        """The next pause, or None when the budget is spent (then the message goes back to the queue)."""
        if self.waited_sec >= self.limit_sec:
            return None
        pause = min(self._pause, self.limit_sec - self.waited_sec)
        self._pause = min(self._pause * 2, MAX_PAUSE_SEC)
        self.waited_sec += pause
        return pause
