"""The gateway's probes on its API port: `/livez` (the process answers) and `/readyz` (it can take requests).

Readiness does not fail on a database blip: every gateway would leave the load balancer at once. It fails only
once PostgreSQL has not answered for READINESS_DB_GRACE_SEC (a lasting outage, or a gateway cut off from it)."""

from __future__ import annotations

import asyncio
import time

from litestar import Response, get
from litestar.datastructures import State

from shared.runtime.logs import get_logger

log = get_logger("gateway.health")
DB_PROBE_TIMEOUT_SEC = 2.0  # one readiness probe's wait for `SELECT 1`, s


class DbReadiness:
    """When PostgreSQL last answered this process (start-up counts: the lifespan connected)."""

    def __init__(self, grace_sec: float) -> None:
        self.grace_sec = grace_sec
        self.last_ok = time.monotonic()

    async def probe(self, db: object) -> tuple[bool, str]:
        try:
            await asyncio.wait_for(db.fetchval("SELECT 1"), DB_PROBE_TIMEOUT_SEC)  # type: ignore[attr-defined]
        except Exception as exc:  # down, refused, timed out: within the grace still ready
            down_sec = time.monotonic() - self.last_ok
            log.warning("readiness_db_unreachable", error=repr(exc), down_sec=round(down_sec, 1))
            if down_sec > self.grace_sec:
                return False, f"database unreachable for {down_sec:.0f} s"
            return True, f"database unreachable for {down_sec:.0f} s (within the {self.grace_sec:g} s grace)"
        self.last_ok = time.monotonic()
        return True, "ok"


@get("/livez", operation_id="livez", tags=["ops"], include_in_schema=False)
async def livez() -> dict[str, str]:
    """The process and its event loop answer (a stuck loop answers nothing: the probe times out)."""
    return {"status": "ok"}


@get("/readyz", operation_id="readyz", tags=["ops"], include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, str]]:
    """200 while this gateway can take requests; 503 once PostgreSQL is gone past the grace."""
    gateway = getattr(state, "gateway", None)
    if gateway is None:
        return Response({"status": "starting"}, status_code=503)
    readiness: DbReadiness = state.db_readiness
    ok, why = await readiness.probe(gateway.res.db)
    return Response({"status": "ok" if ok else "unavailable", "detail": why}, status_code=200 if ok else 503)
