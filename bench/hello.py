"""Two HTTP-only references for bench.gateway_cpu, served by uvicorn as the gateway is (httptools, uvloop): a
bare ASGI app and a one-handler Litestar app, each answering a small JSON body with no database or queue."""

from __future__ import annotations

from litestar import Litestar, get

BODY = b'{"id":"0193a3c2-0000-7000-8000-000000000000","status":"queued"}'


async def bare(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """The least an ASGI app can do per request under uvicorn."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})  # type: ignore[operator]


@get("/api/jobs/{job_id:str}", sync_to_thread=False)
def job(job_id: str) -> dict[str, str]:
    return {"id": job_id, "status": "queued"}


litestar = Litestar(route_handlers=[job], openapi_config=None)
