"""The Litestar gateway: REST in, jobs onto NATS; resources opened once in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from shared.bus import BacklogGauge
from shared.resources import Resources, open_resources
from shared.settings import Settings

from .errors import EXCEPTION_HANDLERS
from .jobs import JobController
from .uploads import UploadController


@get("/health", operation_id="health", tags=["ops"])
async def health(res: NamedDependency[Resources]) -> dict[str, str]:
    """Liveness and readiness: the database answers."""
    await res.db.fetchval("SELECT 1")
    return {"status": "ok"}


def _resources(state: State) -> Resources:
    return state.res


def _backlog(state: State) -> BacklogGauge:
    return state.backlog


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings, "gateway") as res:
            app.state.res = res
            app.state.backlog = BacklogGauge(res.js, settings)
            yield

    return Litestar(
        route_handlers=[JobController, UploadController, health],
        lifespan=[lifespan],
        dependencies={
            "res": Provide(_resources, sync_to_thread=False), "backlog": Provide(_backlog, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(title="clipjet", version="0.1.0", path="/schema"),
    )
