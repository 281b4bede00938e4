"""The one outbound fetch path refuses what it must before contacting anything (full SSRF suite: its own issue)."""

from __future__ import annotations

import pytest

from shared.errors import FetchRefused
from shared.net.fetch import check_url
from shared.settings import load_settings

STRICT = load_settings({})
DEMO = load_settings({}, fetch_allow_private=True)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/a.mp4", "http://localhost:8080/a.mp4", "http://10.1.2.3/a.mp4", "http://192.168.0.10/a.mp4",
    "http://172.16.5.5/a.mp4", "http://100.64.0.1/a.mp4", "http://[::1]/a.mp4", "http://[::ffff:127.0.0.1]/a.mp4",
    "http://0.0.0.0/a.mp4", "http://2130706433/a.mp4", "http://169.254.169.254/latest/meta-data",
    "ftp://example.com/a.mp4", "file:///etc/passwd", "gopher://x/", "http://user@example.com/a.mp4",
])
async def test_refused_by_default(url: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        await check_url(url, STRICT)
    assert caught.value.code == "fetch_refused"


async def test_allow_private_opens_loopback_but_never_metadata() -> None:
    await check_url("http://127.0.0.1:9/a.mp4", DEMO)
    with pytest.raises(FetchRefused):
        await check_url("http://169.254.169.254/latest/meta-data", DEMO)


async def test_public_literal_address_passes() -> None:
    await check_url("https://93.184.215.14/a.mp4", STRICT)  # no lookup needed, nothing contacted
