"""The Litestar gateway: REST in, jobs onto NATS; resources opened once in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.types import ASGIApp

from shared.runtime import tracing
from shared.runtime.cpus import available_cpus
from shared.runtime.logs import configure_logging, get_logger
from shared.runtime.resources import open_resources
from shared.settings import Settings, load_settings

from .auth import caller_dependency, rate_limit_headers
from .batches import BatchController
from .errors import EXCEPTION_HANDLERS
from .events import JobEventsController, job_feed_lifespan
from .fastpath import fast_routes
from .health import DbReadiness, livez, readyz
from .jobs import JobController
from .observe import observed
from .openapi import openapi_config
from .proxies import behind_proxies
from .state import Gateway, gateway_of
from .tracing import request_spans
from .uploads import UploadController
from .usage import UsageController
from .web import allow_page_origins, web_router

log = get_logger("gateway")


@get("/health", operation_id="health", tags=["ops"])
async def health(gw: NamedDependency[Gateway]) -> dict[str, str]:
    """Liveness and readiness: the database answers."""
    async with gw.breakers.db:
        await gw.res.db.fetchval("SELECT 1")
    return {"status": "ok"}


def create_app(settings: Settings, *, fast_path: bool = True) -> Litestar:
    """The gateway app; `fast_path`: POST /api/jobs and GET /api/jobs/{id} are answered by fastpath.py (the same
    answers for less CPU; off only to compare the two in tests)."""
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.auth == "off":
            log.warning("auth_off", message="AUTH=off: anyone who reaches this gateway can submit and read every "
                        "job. Use it only on a private network; set AUTH=on and create keys with `clipjet keys`.")
        async with open_resources(settings, "gateway") as res:
            app.state.gateway = Gateway.for_resources(res)
            app.state.db_readiness = DbReadiness(settings.readiness_db_grace_sec)
            await app.state.gateway.scratch.start(res.nc)
            await allow_page_origins(res)
            yield

    app = Litestar(
        route_handlers=[JobController, JobEventsController, BatchController, UploadController, UsageController,
                        health, livez, readyz, web_router],
        lifespan=[lifespan, job_feed_lifespan],
        middleware=[*([request_spans(settings.otel_trust_client_context)] if tracing.active() else []),
                    rate_limit_headers],
        dependencies={
            "gw": Provide(gateway_of, sync_to_thread=False), "caller": Provide(caller_dependency, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.gateway_max_body_bytes,
        openapi_config=openapi_config("0.1.0"),
        logging_config=None,  # every logger goes through shared/runtime/logs.py (Litestar's default replaces the
        # root's)
    )
    if fast_path:
        fast_routes(app, settings.otel_trust_client_context)
    return app


def gateway_processes(settings: Settings) -> int:
    """GATEWAY_PROCESSES, or one process per CPU this process may use (its cgroup limit) when it is 0."""
    return settings.gateway_processes if settings.gateway_processes > 0 else available_cpus()


def app_from_environment(*, fast_path: bool = True) -> ASGIApp:
    """uvicorn's app factory in each gateway process (`clipjet gateway`): the settings from the environment; every
    request gets a request id, a log line and its metrics (observe.py). `fast_path`: see create_app."""
    settings = load_settings()
    configure_logging(settings.log_level)
    tracing.start(settings, "gateway")  # in each gateway process: the exporter's thread does not survive a fork
    return behind_proxies(observed(create_app(settings, fast_path=fast_path)), settings.gateway_trusted_proxies)
