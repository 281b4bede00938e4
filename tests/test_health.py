"""Health endpoints: /livez fails while the event loop is stuck, a worker's /readyz fails while it drains, and the
gateway's /readyz survives a short PostgreSQL outage (fails only after READINESS_DB_GRACE_SEC)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import pytest

from services.stack.devstack.process import free_port
from shared.db import jobs
from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.runtime import bus, ops
from shared.runtime.ops import Health, serve_ops, watch_event_loop
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.http_source import MediaServer
from tests.ops_fleet import OpsFleet
from tests.tcp_forward import TcpForward

STALL_SEC = 1.0
BLOCK_SEC = 3.0  # the test blocks its own event loop this long
DRAIN_GRACE_SEC = 15.0  # SHUTDOWN_GRACE_SEC of the draining worker: its in-flight fetch holds it this long
DB_GRACE_SEC = 10.0
WAIT_SEC = 60.0
POLL_SEC = 0.2


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


async def test_livez_is_503_while_the_event_loop_is_blocked_and_200_again_after() -> None:
    health = Health()
    health.mark_ready()
    port = free_port()
    server = serve_ops(port, health=health)
    assert server is not None
    url = f"http://127.0.0.1:{port}/livez"
    try:
        watch_event_loop(STALL_SEC, health)
        await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_status, url) == 200
        seen: list[int] = []

        def probe_while_blocked() -> None:  # from another thread: the ops server answers while the loop is stuck
            time.sleep(STALL_SEC + 1.0)
            seen.append(_status(url))

        prober = threading.Thread(target=probe_while_blocked)
        prober.start()
        time.sleep(BLOCK_SEC)  # noqa: ASYNC251 - blocking the event loop is the point
        prober.join()
        assert seen == [503]
        await asyncio.sleep(STALL_SEC)  # the loop ticks again
        assert await asyncio.to_thread(_status, url) == 200
        assert await asyncio.to_thread(_status, f"http://127.0.0.1:{port}/readyz") == 200
    finally:
        server.shutdown()


HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # the blank line that ends the headers never comes
CLIENT_WAIT_SEC = 30.0  # a test connection's read gives up after this, s


def _half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_WAIT_SEC)
    sock.sendall(HALF_REQUEST)
    return sock


def test_the_ops_port_closes_a_half_sent_request() -> None:
    port = free_port()
    server = serve_ops(port, host="127.0.0.1", health=Health())
    assert server is not None
    try:
        with _half_sent(port) as idle:
            assert idle.recv(1024) == b""  # closed by the server after OPS_HANDLER_TIMEOUT_SEC, not held forever
        assert _status(f"http://127.0.0.1:{port}/metrics") == 200
    finally:
        server.shutdown()


def test_the_ops_port_serves_at_most_its_connection_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections over OPS_MAX_CONNECTIONS are closed at once (the handler timeout is made long here, so only the
    cap can close them); once the held ones end, the port answers again."""
    monkeypatch.setattr(ops._QuietHandler, "timeout", CLIENT_WAIT_SEC * 4)
    port = free_port()
    server = serve_ops(port, host="127.0.0.1", health=Health())
    assert server is not None
    held = [_half_sent(port) for _ in range(ops.OPS_MAX_CONNECTIONS)]
    try:
        extra = [_half_sent(port) for _ in range(5)]
        for sock in extra:
            with sock:
                assert sock.recv(1024) == b""
    finally:
        for sock in held:
            sock.close()
    try:
        deadline = time.monotonic() + WAIT_SEC
        while _status(f"http://127.0.0.1:{port}/metrics") != 200:
            assert time.monotonic() < deadline, "the ops port did not answer after its connections ended"
            time.sleep(POLL_SEC)
    finally:
        server.shutdown()


@pytest.mark.settings(shutdown_grace_sec=DRAIN_GRACE_SEC)
async def test_worker_readyz_is_503_while_it_drains_after_sigterm(
    settings: Settings, resources: Resources, sample_video: Path, tmp_path: Path
) -> None:
    fleet = OpsFleet(settings, tmp_path)
    try:
        with MediaServer(sample_video.parent) as origin:
            origin.silent_before_headers_sec = DRAIN_GRACE_SEC * 2  # the fetch hangs: a message in flight
            fleet.start("fetch", "worker", "fetch")
            await fleet.wait_status("fetch", "/readyz", 200)
            assert (await fleet.get("fetch", "/livez")).status_code == 200
            job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=origin.url(sample_video.name)),
                                 start_sec=2.0, end_sec=4.0)
            await bus.publish_job(resources.js, resources.subjects, job)
            async with asyncio.timeout(WAIT_SEC):
                while "stage_started" not in [  # noqa: ASYNC110 - polling the database
                    e["type"] for e in await jobs.job_events(resources.db, uuid.UUID(job.id))
                ]:
                    await asyncio.sleep(POLL_SEC)
            worker = fleet.procs["fetch"]
            worker.terminate()
            await fleet.wait_status("fetch", "/readyz", 503, timeout_sec=DRAIN_GRACE_SEC / 2)
            assert worker.poll() is None  # still draining its in-flight message, and still alive
            assert (await fleet.get("fetch", "/livez")).status_code == 200
            assert await asyncio.to_thread(worker.wait, WAIT_SEC) == 0
    finally:
        fleet.stop()


def _on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


@pytest.mark.settings(readiness_db_grace_sec=DB_GRACE_SEC)
async def test_gateway_readyz_survives_a_short_database_outage(
    settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    target = urlsplit(settings.database_url).port
    assert target is not None
    port, api_port = free_port(), free_port()
    forward = TcpForward(port, target)
    await forward.start()
    fleet = OpsFleet(msgspec.structs.replace(settings, database_url=_on_port(settings.database_url, port)), tmp_path)
    readyz = f"http://127.0.0.1:{api_port}/readyz"
    try:
        fleet.start("gateway", "gateway", GATEWAY_PORT=str(api_port), GATEWAY_PROCESSES="1")
        async with asyncio.timeout(WAIT_SEC):
            while await asyncio.to_thread(_status, readyz) != 200:
                assert fleet.procs["gateway"].poll() is None, fleet.log("gateway")[-3000:]
                await asyncio.sleep(POLL_SEC)
        assert await asyncio.to_thread(_status, f"http://127.0.0.1:{api_port}/livez") == 200
        await forward.close()  # PostgreSQL unreachable: connections cut, new ones refused
        cut = time.monotonic()
        assert await asyncio.to_thread(_status, readyz) == 200  # a blip: still ready
        assert await asyncio.to_thread(_status, f"http://127.0.0.1:{api_port}/health") != 200  # it is down
        await asyncio.sleep(max(0.0, cut + DB_GRACE_SEC + 1 - time.monotonic()))
        assert await asyncio.to_thread(_status, readyz) == 503  # a lasting outage: not ready
        forward = TcpForward(port, target)
        await forward.start()
        async with asyncio.timeout(WAIT_SEC):
            while await asyncio.to_thread(_status, readyz) != 200:  # noqa: ASYNC110 - back once PostgreSQL answers
                await asyncio.sleep(POLL_SEC)
    finally:
        fleet.stop()
        await forward.close()
