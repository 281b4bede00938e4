"""The guarded proxy's byte pump: bytes toward the client count against the session's budget
(FETCH_MAX_BYTES) and must come at its minimum rate (FETCH_MIN_RATE_KBPS after FETCH_MIN_RATE_GRACE_SEC)."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import TYPE_CHECKING

from shared.errors import FetchRefused
from shared.runtime.logs import get_logger

if TYPE_CHECKING:
    from shared.net.fetchproxy import FetchSession

log = get_logger("fetchproxy")
PIPE_CHUNK = 64 * 1024  # bytes read at once
KIB = 1024  # bytes per KiB (FETCH_MIN_RATE_KBPS)


async def pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, session: FetchSession, counted: FetchSession | None
) -> None:
    """Copy until EOF; bytes toward the client count against the session's budget, and the origin must send
    them at the session's minimum rate (`_too_slow`)."""
    loop = asyncio.get_running_loop()
    waited, moved = 0.0, 0
    with suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            began = loop.time()
            chunk = await asyncio.wait_for(source.read(PIPE_CHUNK), session.idle_sec)
            if not chunk:
                break
            if counted is not None:
                waited, moved = waited + loop.time() - began, moved + len(chunk)
                counted.received += len(chunk)
                if counted.received > counted.max_bytes:
                    counted.refuse(FetchRefused(
                        f"the source is over the {counted.max_bytes}-byte limit", code="source_too_large"))
                    sink.close()
                    return
                if _too_slow(counted, waited, moved):
                    counted.refuse(FetchRefused(
                        f"the source's server sent {moved} bytes in {waited:.0f} s: under the "
                        f"{counted.min_rate_bps / KIB:g} KiB/s a source must keep up; give a faster URL or upload "
                        f"the file", code="source_too_slow"))
                    log.warning("fetch_too_slow", bytes=moved, waited_sec=round(waited, 1))
                    sink.close()
                    return
            sink.write(chunk)
            await sink.drain()
    with suppress(Exception):
        if sink.can_write_eof():
            sink.write_eof()


def _too_slow(session: FetchSession, waited: float, moved: int) -> bool:
    """The origin of one connection averaged under the session's minimum rate over the time spent waiting on
    it (time the client took to read is not counted), once that time is past the grace period."""
    return session.min_rate_bps > 0 and waited > session.rate_grace_sec and moved < session.min_rate_bps * waited
