"""SSRF suite: every way of naming a forbidden address is refused with its code, by the guarded fetch path and
by the proxy ffmpeg reads through, and a listener on the forbidden address sees no connection at all."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.errors import ClipError, FetchRefused
from shared.media.cut import copy_cut
from shared.media.probe import probe
from shared.net import netguard
from shared.net.fetch import fetch_to_file, inspect_url
from shared.net.fetchproxy import fetch_session
from shared.settings import Settings, load_settings
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer

STRICT = load_settings({})
VICTIM_HOST = "127.0.0.2"  # loopback, but outside the 127.0.0.1/32 the redirect tests allow


class Listener:
    """A TCP listener that only counts connections (the thing an attacker wants reached)."""

    def __init__(self, host: str, family: socket.AddressFamily = socket.AF_INET, port: int = 0) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def victims() -> Iterator[tuple[Listener, Listener | None]]:
    """Loopback listeners on one port: IPv4 (all of 127/8 reaches it via 0.0.0.0? no: 127.0.0.1) and IPv6 ::1."""
    v4 = Listener("127.0.0.1")
    try:
        v6: Listener | None = Listener("::1", socket.AF_INET6, v4.port)
    except OSError:
        v6 = None
    yield v4, v6
    v4.close()
    if v6:
        v6.close()


# Each URL names the victim (or another forbidden address) some way; {p} is the victim's port.
CASES = [
    "http://127.0.0.1:{p}/a.mp4", "http://localhost:{p}/a.mp4", "http://2130706433:{p}/a.mp4",
    "http://0x7f000001:{p}/a.mp4", "http://0177.0.0.1:{p}/a.mp4", "http://0x7f.0.0.1:{p}/a.mp4",
    "http://127.1:{p}/a.mp4", "http://127.0.0.1.:{p}/a.mp4", "http://[::1]:{p}/a.mp4",
    "http://[::ffff:127.0.0.1]:{p}/a.mp4", "http://[::ffff:7f00:1]:{p}/a.mp4", "http://[::127.0.0.1]:{p}/a.mp4",
    "http://[64:ff9b::7f00:1]:{p}/a.mp4", "http://[2002:7f00:1::]:{p}/a.mp4", "http://0.0.0.0:{p}/a.mp4",
    "http://[::ffff:0:7f00:1]:{p}/a.mp4", "http://[64:ff9b:1::7f00:1]:{p}/a.mp4",  # public on Python 3.11's ipaddress
    "http://[::ffff:0:a9fe:a9fe]/latest/meta-data", "http://[::1:{p}/a.mp4",
    "http://0:{p}/a.mp4", "http://[::]:{p}/a.mp4", "http://10.1.2.3:{p}/a.mp4", "http://172.16.5.5:{p}/a.mp4",
    "http://192.168.0.10:{p}/a.mp4", "http://100.64.0.1:{p}/a.mp4", "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]:{p}/a.mp4", "http://[fc00::1]:{p}/a.mp4", "http://[fd12:3456::1]:{p}/a.mp4",
    "http://224.0.0.1:{p}/a.mp4", "http://[ff02::1]:{p}/a.mp4", "http://240.0.0.1:{p}/a.mp4",
    "http://255.255.255.255:{p}/a.mp4", "https://127.0.0.1:{p}/a.mp4", "https://[::1]:{p}/a.mp4",
    "http://user@127.0.0.1:{p}/a.mp4", "http://example.com@127.0.0.1:{p}/a.mp4",
    "http://127.0.0.1:{p}@example.com/a.mp4", "http://127.0.0.1:{p}\\@example.com/a.mp4",
    "file:///etc/passwd", "ftp://127.0.0.1:{p}/a.mp4", "gopher://127.0.0.1:{p}/_GET", "data:video/mp4;base64,AAAA",
    "dict://127.0.0.1:{p}/", "HTTP://127.0.0.1:{p}/a.mp4", "http:///a.mp4",
]


@pytest.mark.parametrize("template", CASES)
async def test_guarded_fetch_refuses(template: str, victims: tuple[Listener, Listener | None], tmp_path: Path) -> None:
    v4, v6 = victims
    before = (v4.connections, v6.connections if v6 else 0)
    url = template.format(p=v4.port)
    with pytest.raises(FetchRefused) as caught:
        await fetch_to_file(url, tmp_path / "out", STRICT)
    assert caught.value.code == "fetch_refused", caught.value.message
    assert (v4.connections, v6.connections if v6 else 0) == before


HTTP_CASES = [c for c in CASES if c.startswith(("http://", "https://")) and "@" not in c and "\\" not in c
              and c != "http:///a.mp4"]


@pytest.mark.parametrize("template", HTTP_CASES)
async def test_ffmpeg_through_the_proxy_is_refused(
    template: str, victims: tuple[Listener, Listener | None], tmp_path: Path
) -> None:
    """ffmpeg given a forbidden URL directly (no check before it): the proxy refuses, nothing is reached."""
    v4, v6 = victims
    before = (v4.connections, v6.connections if v6 else 0)
    async with fetch_session(STRICT) as session:
        with pytest.raises(ClipError) as caught, session.errors():
            await copy_cut(template.format(p=v4.port), tmp_path / "o.mp4", seek_sec=0, duration_sec=1,
                           input_args=session.ffmpeg_input_args())
    assert caught.value.code == "fetch_refused", caught.value.message
    assert (v4.connections, v6.connections if v6 else 0) == before


async def test_proxy_needs_its_credentials(victims: tuple[Listener, Listener | None]) -> None:
    """Another local process cannot use the proxy: no session credentials, 407; wrong ones, 407."""
    async with fetch_session(load_settings({}, fetch_allow_private=True)) as session:
        port = int(session.url.rsplit(":", 1)[1])
        for auth in ("", "Proxy-Authorization: Basic " + base64.b64encode(b"x:y").decode() + "\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            target = f"http://127.0.0.1:{victims[0].port}/"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            assert status.startswith(b"HTTP/1.1 407"), status
    assert victims[0].connections == 0


def _allow_origin_only() -> Settings:
    return load_settings({}, fetch_allow_networks="127.0.0.1/32")


async def test_redirect_to_private_during_ffmpeg_read_is_refused(sample_video: Path, tmp_path: Path) -> None:
    """ffmpeg follows a 302 itself; the next hop goes through the proxy, which refuses it."""
    victim = Listener(VICTIM_HOST)
    try:
        with MediaServer(sample_video.parent) as origin:
            origin.redirects["/jump.mp4"] = f"http://{VICTIM_HOST}:{victim.port}/secret.mp4"
            origin.redirects["/fine.mp4"] = f"/{sample_video.name}"
            settings = _allow_origin_only()
            async with fetch_session(settings) as session:
                await copy_cut(origin.url("fine.mp4"), tmp_path / "ok.mp4", seek_sec=2, duration_sec=1,
                               input_args=session.ffmpeg_input_args())  # a redirect within what is allowed works
                assert (tmp_path / "ok.mp4").stat().st_size > 0
                with pytest.raises(ClipError) as caught, session.errors():
                    await copy_cut(origin.url("jump.mp4"), tmp_path / "o.mp4", seek_sec=0, duration_sec=1,
                                   input_args=session.ffmpeg_input_args())
                assert caught.value.code == "fetch_refused"
            async with fetch_session(settings) as session:
                with pytest.raises(ClipError) as probed, session.errors():
                    await probe(origin.url("jump.mp4"), options=session.av_options())
                assert probed.value.code == "fetch_refused"
            with pytest.raises(FetchRefused):
                await fetch_to_file(origin.url("jump.mp4"), tmp_path / "d", settings)
            assert ("GET", "/jump.mp4", None) in [(m, p, None) for m, p, _ in origin.requests]
    finally:
        victim.close()
    assert victim.connections == 0


async def test_dns_rebinding_connects_to_the_checked_address(
    sample_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves to an allowed address once, then to the victim: the connection goes where was checked."""
    victim = Listener(VICTIM_HOST)
    answers: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        answers.append(host)
        return ["127.0.0.1"] if len(answers) == 1 else [VICTIM_HOST]

    monkeypatch.setattr(netguard, "resolve_host", rebinding)
    try:
        with MediaServer(sample_video.parent) as origin:
            port = origin.base_url.rsplit(":", 1)[1]
            async with fetch_session(_allow_origin_only()) as session:
                await copy_cut(f"http://media.rebind.test:{port}/{sample_video.name}", tmp_path / "o.mp4",
                               seek_sec=0, duration_sec=1, input_args=session.ffmpeg_input_args())
            assert session.contacted == [f"media.rebind.test:{port} -> 127.0.0.1"]
            assert origin.requests
    finally:
        victim.close()
    assert answers == ["media.rebind.test"] and victim.connections == 0


async def test_size_limit_is_enforced_by_the_proxy(sample_video: Path, tmp_path: Path) -> None:
    settings = load_settings({}, fetch_allow_private=True, fetch_max_bytes=200_000)
    with MediaServer(sample_video.parent) as origin:
        origin.ranges = False
        with pytest.raises(FetchRefused) as caught:
            await fetch_to_file(origin.url(sample_video.name), tmp_path / "d", settings)
    assert caught.value.code == "source_too_large"


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
    ], check=True, capture_output=True, timeout=60)
    return cert, key


async def test_https_goes_through_connect_and_is_verified(
    sample_video: Path, tmp_path: Path, tls_cert: tuple[Path, Path]
) -> None:
    """https reaches the origin as a CONNECT tunnel to the checked address; ffmpeg verifies the certificate."""
    cert, key = tls_cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with MediaServer(sample_video.parent) as origin:
        origin._server.socket = context.wrap_socket(origin._server.socket, server_side=True)
        url = origin.base_url.replace("http://", "https://") + f"/{sample_video.name}"
        trusted = load_settings({}, fetch_allow_networks="127.0.0.1/32", fetch_ca_file=str(cert))
        async with fetch_session(trusted) as session:
            await copy_cut(url, tmp_path / "ok.mp4", seek_sec=2, duration_sec=1,
                           input_args=session.ffmpeg_input_args(url))
            remote = await inspect_url(url, session, trusted)
            fetched = await fetch_to_file(url, tmp_path / "whole.mp4", trusted, session)
        assert (tmp_path / "ok.mp4").stat().st_size > 0
        assert remote.ranges and remote.size == fetched.size == sample_video.stat().st_size
        assert session.contacted and all(c.endswith("-> 127.0.0.1") for c in session.contacted)
        served = len(origin.requests)
        async with fetch_session(_allow_origin_only()) as session:  # the system's CAs do not know this one
            with pytest.raises(ClipError) as caught, session.errors():
                await copy_cut(url, tmp_path / "no.mp4", seek_sec=0, duration_sec=1,
                               input_args=session.ffmpeg_input_args(url))
        assert caught.value.code == "media_error" and session.refusal is None
        assert len(origin.requests) == served  # the handshake failed before any request


@pytest.mark.settings(fetch_allow_private=False)
@pytest.mark.parametrize(("template", "status"), [
    ("file:///etc/passwd", 422), ("http://user@127.0.0.1:{p}/a.mp4", 422), ("gopher://127.0.0.1:{p}/", 422),
    ("http://127.0.0.1:{p}/a.mp4", 202), ("http://0x7f000001:{p}/a.mp4", 202), ("http://[::1]:{p}/a.mp4", 202),
])
async def test_jobs_naming_forbidden_urls_fail_without_a_connection(
    client: AsyncTestClient[Any], workers: Workers, victims: tuple[Listener, Listener | None], template: str,
    status: int,
) -> None:
    """The form is refused at submit (422); an address only the resolver reveals fails the job (fetch_refused,
    once, no retry); the listener on that address never sees a connection."""
    v4, v6 = victims
    before = (v4.connections, v6.connections if v6 else 0)
    workers.start("fetch")
    response = await client.post("/api/jobs", json={
        "source": {"type": "url", "url": template.format(p=v4.port)}, "startSec": 0, "endSec": 1,
    })
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["code"] == "fetch_refused"
    else:
        job = await wait_for_job(client, response.json()["id"])
        assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "fetch_refused", 1)
    assert (v4.connections, v6.connections if v6 else 0) == before
