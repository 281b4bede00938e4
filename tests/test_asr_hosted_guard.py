"""The hosted-ASR client against a misbehaving provider (a real HTTP server on loopback): an endless answer is
cut at ASR_HOSTED_MAX_REPLY_MB, a provider's error text reaches the log but not the job's error, and a key that
would cross the internet over http:// is warned about when the transcriber starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from shared.asr.audio import SAMPLE_RATE_HZ
from shared.asr.hosted import HostedAsr, key_sent_in_clear, warn_if_key_in_clear
from shared.errors import HostedAsrRefused, HostedAsrUnavailable
from shared.settings import load_settings

PROVIDER_SECRET = "internal-shard-7 stack: at provider.py line 3"  # what the provider's error body says
CHUNK = b"x" * 65536
ENDLESS_LIMIT_SEC = 60.0  # an endless answer must be given up long before this


async def _endless(request: web.Request, status: int) -> web.StreamResponse:
    reply = web.StreamResponse(status=status)
    await reply.prepare(request)
    while True:  # until the client hangs up
        await reply.write(CHUNK)


async def _transcriptions(request: web.Request) -> web.StreamResponse:
    await request.read()
    mode = request.query.get("mode")
    if mode == "endless":
        return await _endless(request, 200)
    if mode == "endless-error":
        return await _endless(request, 502)
    return web.Response(status=int(mode or 500), text=f'{{"error": "{PROVIDER_SECRET}"}}')


@pytest.fixture
async def provider() -> AsyncIterator[str]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/audio/transcriptions", _transcriptions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    finally:
        await runner.cleanup()


def _client(url: str, **overrides: object) -> HostedAsr:
    return HostedAsr(load_settings({}, asr_hosted_url=url, asr_hosted_key="k" * 24, **overrides))


SILENCE = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)


async def test_an_endless_answer_is_cut_at_the_cap(provider: str) -> None:
    client = _client(f"{provider}?mode=endless", asr_hosted_max_reply_mb=1.0)
    with pytest.raises(HostedAsrRefused) as refused:
        await asyncio.wait_for(client.transcribe(SILENCE, "en"), ENDLESS_LIMIT_SEC)
    assert "ASR_HOSTED_MAX_REPLY_MB" in refused.value.message
    with capture_logs() as logs, pytest.raises(HostedAsrUnavailable):
        await asyncio.wait_for(_client(f"{provider}?mode=endless-error").transcribe(SILENCE, "en"), ENDLESS_LIMIT_SEC)
    [logged] = [line for line in logs if line["event"] == "asr_hosted_error"]
    assert logged["status"] == 502 and 0 < len(logged["body"]) <= 2048


@pytest.mark.parametrize(("status", "error"), [(503, HostedAsrUnavailable), (429, HostedAsrUnavailable),
                                               (400, HostedAsrRefused)])
async def test_a_providers_error_text_is_logged_not_shown(provider: str, status: int, error: type) -> None:
    with capture_logs() as logs, pytest.raises(error) as raised:
        await _client(f"{provider}?mode={status}").transcribe(SILENCE, "en")
    assert str(status) in raised.value.message and PROVIDER_SECRET not in raised.value.message
    [logged] = [line for line in logs if line["event"] == "asr_hosted_error"]
    assert logged["status"] == status and PROVIDER_SECRET in logged["body"]


@pytest.mark.parametrize(("url", "warned"), [
    ("http://asr.example.com/v1", True), ("http://93.184.216.34:8000/v1", True), ("http://[2606:4700::1111]/v1", True),
    ("https://asr.example.com/v1", False), ("http://127.0.0.1:8000/v1", False), ("http://10.1.2.3/v1", False),
    ("http://whisper:8000/v1", False), ("http://whisper.asr.svc.cluster.local/v1", False),
    ("http://localhost:9000", False), ("http://[::1]:9000", False), ("http://8.8.8.8/v1", True),
])
def test_a_key_over_http_to_a_public_host_is_warned_about(url: str, warned: bool) -> None:
    settings = load_settings({}, asr_hosted_url=url, asr_hosted_key="k" * 24)
    assert key_sent_in_clear(settings) is warned
    with capture_logs() as logs:
        warn_if_key_in_clear(settings)
    assert [line["event"] for line in logs] == (["asr_hosted_key_cleartext"] if warned else [])
    assert not key_sent_in_clear(load_settings({}, asr_hosted_url=url))  # no key: nothing to leak
