"""yt-dlp sources against pages on a local HTTP server (its generic extractor): an HTML5 video page end to end
to a finished clip; an HLS playlist (whose nested opens could leave the guard) is not read; a domain outside
the allowlist and blocked pages fail with their codes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.errors import FetchRefused
from shared.net.fetchproxy import fetch_session
from shared.net.ytdlp import download_section, find_media
from shared.settings import load_settings
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer
from tests.media import probe as ffprobe
from tests.test_clip_pipeline import download

LOCAL_PAGES = "127.0.0.1"  # the allowlist in these tests: the local server only
PAGE = '<!DOCTYPE html><html><head><title>clip</title></head><body><video src="clip.mp4"></video></body></html>'
CLIP = (5.0, 8.0)
DURATION_SLACK_SEC = 0.15  # a stream copy from a keyframe: starts at or before startSec, ends a few frames late


@pytest.fixture(scope="module")
def site(sample_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """page.html with <video src="clip.mp4">, and the same video as an HLS playlist (2 s segments)."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(sample_video, root / "clip.mp4")
    (root / "page.html").write_text(PAGE)
    (root / "hls").mkdir()
    subprocess.run([
        "ffmpeg", "-v", "error", "-y", "-i", str(sample_video), "-c", "copy", "-muxdelay", "0", "-muxpreload", "0",
        "-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod", "-hls_segment_filename",
        str(root / "hls" / "seg%03d.ts"), str(root / "hls" / "index.m3u8"),
    ], check=True, timeout=60)
    return root


async def _run(client: AsyncTestClient[Any], url: str) -> dict[str, Any]:
    response = await client.post("/api/jobs", json={
        "source": {"type": "youtube", "url": url}, "startSec": CLIP[0], "endSec": CLIP[1],
    })
    assert response.status_code == 202, response.text
    return await wait_for_job(client, response.json()["id"])


async def _assert_clip(job: dict[str, Any], tmp_path: Path) -> None:
    assert job["status"] == "done", job
    result = job["result"]
    assert result["actualStartSec"] <= CLIP[0] + 1e-3 and result["actualStartSec"] > CLIP[0] - 2.1  # 2 s GOP
    clip = await download(job["urls"]["video"], tmp_path / "clip.mp4")
    info = ffprobe(clip)
    kinds = {s["codec_type"]: s["codec_name"] for s in info["streams"]}
    assert kinds == {"video": "h264", "audio": "aac"}
    expected = CLIP[1] - result["actualStartSec"]
    assert float(info["format"]["duration"]) == pytest.approx(expected, abs=DURATION_SLACK_SEC)


@pytest.mark.settings(fetch_allowed_domains=LOCAL_PAGES)
async def test_page_to_finished_clip(
    client: AsyncTestClient[Any], workers: Workers, site: Path, tmp_path: Path
) -> None:
    workers.start()
    with MediaServer(site) as origin:
        job = await _run(client, origin.url("page.html"))
        requests = list(origin.requests)
    await _assert_clip(job, tmp_path)
    assert requests[0][1] == "/page.html"


@pytest.mark.settings(fetch_allowed_domains=LOCAL_PAGES)
async def test_hls_page_is_not_read(client: AsyncTestClient[Any], workers: Workers, site: Path) -> None:
    """An HLS stream makes ffmpeg open every URL its playlist names (shared.media.inputs): refused with a code
    that says to upload, and no segment is fetched."""
    workers.start()
    with MediaServer(site) as origin:
        job = await _run(client, origin.url("hls/index.m3u8"))
        requests = list(origin.requests)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unsupported", 1), job
    assert "upload" in job["errorMessage"]
    assert not [path for _, path, _ in requests if path.endswith(".ts")], requests


@pytest.mark.parametrize(("url", "code"), [
    ("{base}/page.html", "domain_not_allowed"), ("https://youtube.com.evil.example/watch?v=x", "domain_not_allowed"),
    ("https://user@www.youtube.com/watch?v=x", "fetch_refused"), ("ftp://youtube.com/x", "fetch_refused"),
])
async def test_domain_outside_the_allowlist_is_refused(
    client: AsyncTestClient[Any], site: Path, url: str, code: str
) -> None:
    """Refused at submit (422, nothing written), and by the fetcher for a message that got past the gateway."""
    with MediaServer(site) as origin:
        page = url.format(base=origin.base_url)
        response = await client.post("/api/jobs", json={
            "source": {"type": "youtube", "url": page}, "startSec": CLIP[0], "endSec": CLIP[1],
        })
        assert response.status_code == 422 and response.json()["error"]["code"] == code, response.text
        settings = load_settings({}, fetch_allow_private=True)  # the default allowlist: YouTube's domains
        async with fetch_session(settings) as session:
            with pytest.raises(FetchRefused) as caught:
                await find_media(page, session, settings)
        assert (caught.value.code == code and "upload" in caught.value.message) or code == "fetch_refused"
        assert origin.requests == []


@pytest.mark.settings(fetch_allowed_domains=LOCAL_PAGES)
@pytest.mark.parametrize(("status", "code"), [(403, "source_blocked"), (404, "source_unavailable")])
async def test_blocked_page_fails_with_a_permanent_code(
    client: AsyncTestClient[Any], workers: Workers, site: Path, status: int, code: str
) -> None:
    workers.start()
    with MediaServer(site) as origin:
        origin.statuses["/watch.html"] = status
        job = await _run(client, origin.url("watch.html"))
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", code, 1)
    assert "upload the file instead" in job["errorMessage"]


@pytest.mark.settings(fetch_allowed_domains=LOCAL_PAGES, fetch_allow_private=False,
                      fetch_allow_networks="127.0.0.1/32")
async def test_page_pointing_at_a_private_address_is_refused(
    client: AsyncTestClient[Any], workers: Workers, site: Path, tmp_path: Path
) -> None:
    """The page is allowed, the video it names is on a forbidden address: yt-dlp's request is refused."""
    workers.start()
    root = tmp_path / "evil"
    root.mkdir()
    (root / "page.html").write_text(PAGE.replace('src="clip.mp4"', 'src="http://127.0.0.2:9/secret.mp4"'))
    with MediaServer(root) as origin:
        job = await _run(client, origin.url("page.html"))
    assert (job["status"], job["errorCode"]) == ("failed", "fetch_refused"), job


async def test_section_download_goes_through_the_proxy(site: Path, tmp_path: Path) -> None:
    """Every request yt-dlp and its ffmpeg make for the section is a connection the guarded proxy made."""
    settings = load_settings({}, fetch_allow_private=True, fetch_allowed_domains=LOCAL_PAGES)
    with MediaServer(site) as origin:
        async with fetch_session(settings) as session:
            page = await find_media(origin.url("page.html"), session, settings)
            before = (len(origin.requests), len(session.contacted))
            path = await download_section(page, session, settings, 4.0, 7.0, tmp_path)
            served = len(origin.requests) - before[0]
            proxied = len(session.contacted) - before[1]
    assert served > 0 and proxied == served, (served, proxied)
    assert float(ffprobe(path)["format"]["duration"]) == pytest.approx(3.0, abs=DURATION_SLACK_SEC)
