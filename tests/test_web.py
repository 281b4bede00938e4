"""The web page at `/` in a real headless Chromium (Playwright, Debian's `chromium`) against a real gateway
process, the stage workers and S3: what a user does with the mouse and keyboard, and what they download."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from services.stack.devstack import free_port
from shared.jobs.apikeys import split_token
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import JOB_TIMEOUT_SEC, POLL_SEC, Workers, make_key
from tests.gateway_proc import gateway_process
from tests.http_source import MediaServer
from tests.media import make_source, probe
from tests.speech import SpeechVideo

async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("CLIPJET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium, or set CLIPJET_CHROMIUM)"),
    pytest.mark.timeout(300),  # a browser, a gateway process and a job on 2 busy cores
]

ONE_FRAME_SEC = 1 / 30  # the test videos are 30 fps
STEP_TIMEOUT_MS = 30_000  # one page action or expectation, ms
JOB_TIMEOUT_MS = int(JOB_TIMEOUT_SEC * 1000)  # a job's end, seen on the page, ms
SUBS_JOB_TIMEOUT_MS = 120_000  # a job with speech recognition, ms
HTTP_TIMEOUT_SEC = 10.0
PART_MIB = 5  # multipart part size in the parts test (S3's smallest part but the last), MiB
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--autoplay-policy=no-user-gesture-required"])
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Console errors (a CSP violation is one) and uncaught exceptions of a page; not the 404 of an events stream
    (the page then polls: a gateway without `/events`)."""

    def __init__(self, page: Any) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(str(error)))

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/events"):
            self.seen.append(f"{message.text} ({message.location.get('url')})")


async def open_page(browser: Any, url: str, token: str) -> tuple[Any, PageErrors]:
    """The page, opened without a key, then given one through its key field."""
    page = await browser.new_page(accept_downloads=True)
    page.set_default_timeout(STEP_TIMEOUT_MS)
    errors = PageErrors(page)
    await page.goto(f"{url}/")
    await page.get_by_label("API key").fill(token)
    await page.get_by_role("button", name="Save key").click()
    await async_api.expect(page.locator("#key-state")).to_have_text(re.compile(r"^key OK \(id [0-9a-f]+\)$"))
    return page, errors


async def wait_done(page: Any, timeout_ms: int) -> None:
    state = page.locator("#job-state")
    await async_api.expect(state).to_have_text(re.compile(r"^(done|job (failed|canceled|expired)|failed)"),
                                               timeout=timeout_ms)
    text = await state.text_content() or ""
    assert re.match(r"^done, \d", text), text  # with the range the clip really covers


async def download(page: Any, link_name: str, path: Path) -> Path:
    async with page.expect_download() as info:
        await page.get_by_role("link", name=link_name).click()
    await (await info.value).save_as(path)
    return path


async def seek(page: Any, seconds: float) -> None:
    await page.evaluate("t => { document.getElementById('player').currentTime = t; }", seconds)


def page_settings(settings: Settings, port: int) -> Settings:
    """The gateway on `port`, whose origin the bucket lets PUT uploads (CORS)."""
    return msgspec.structs.replace(settings, s3_cors_origins=f"http://127.0.0.1:{port}")


async def test_upload_points_by_keyboard_and_download_of_the_clip(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path, browser: Any, tmp_path: Path
) -> None:
    token = await make_key(resources.db, "web")
    workers.start()
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        page, errors = await open_page(browser, url, token)
        await page.get_by_label("Video file").set_input_files(sample_video)
        await page.wait_for_function("() => document.getElementById('player').readyState >= 1")  # it plays locally
        await page.locator("#player").focus()
        await seek(page, 2.5)
        for _ in range(3):
            await page.keyboard.press("ArrowRight")  # three frames on: 2.6 s
        await page.keyboard.press("i")
        await seek(page, 6.0)
        await page.keyboard.press("Shift+ArrowRight")  # one second (30 frames) on: 7.0 s
        await page.keyboard.press("ArrowLeft")  # and one frame back
        await page.keyboard.press("o")
        in_sec, out_sec = float(await page.get_by_label("In (s)").input_value()), float(
            await page.get_by_label("Out (s)").input_value())
        assert in_sec == pytest.approx(2.6, abs=1e-3) and out_sec == pytest.approx(7 - ONE_FRAME_SEC, abs=1e-3)

        await page.get_by_role("button", name="Make the clip").click()
        await wait_done(page, JOB_TIMEOUT_MS)
        clip = await download(page, "Download the clip (MP4)", tmp_path / "clip.mp4")
        await async_api.expect(page.locator("#result")).to_be_visible()
        assert errors.seen == []

    info = probe(clip)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert float(video["duration"]) == pytest.approx(out_sec - in_sec, abs=2 * ONE_FRAME_SEC)
    assert float(info["format"]["duration"]) == pytest.approx(out_sec - in_sec, abs=0.1)
    uploads = await resources.storage.list_keys("uploads/")
    assert len(uploads) == 1 and uploads[0].endswith("/sample.mp4")  # the browser PUT it straight into the bucket


@pytest.mark.settings(upload_single_put_max_mb=0, upload_part_mb=PART_MIB)
async def test_a_file_over_the_single_put_limit_goes_up_in_parts(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path, browser: Any, tmp_path: Path
) -> None:
    token = await make_key(resources.db, "web")
    workers.start()
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        page, errors = await open_page(browser, url, token)
        parts: list[str] = []
        page.on("request", lambda request: parts.append(request.url)
                if request.method == "PUT" and "partNumber=" in request.url else None)
        await page.get_by_label("Video file").set_input_files(sample_video)
        await page.get_by_label("In (s)").fill("3")
        await page.get_by_label("Out (s)").fill("5")
        await page.get_by_role("button", name="Make the clip").click()
        await wait_done(page, JOB_TIMEOUT_MS)
        clip = await download(page, "Download the clip (MP4)", tmp_path / "clip.mp4")
        assert errors.seen == []

    assert len(parts) == -(-sample_video.stat().st_size // (PART_MIB * 1024 * 1024)) >= 2  # one PUT per part
    assert float(probe(clip)["format"]["duration"]) == pytest.approx(2.0, abs=0.1)
@pytest.mark.settings(asr_model="tiny.en")
async def test_url_source_with_typed_points_and_subtitles(
    settings: Settings, resources: Resources, workers: Workers, speech_video: SpeechVideo, browser: Any,
    tmp_path: Path,
) -> None:
    token = await make_key(resources.db, "web")
    workers.start()
    port = free_port()
    with MediaServer(speech_video.path.parent) as media, gateway_process(page_settings(settings, port), port) as url:
        page, errors = await open_page(browser, url, token)
        await page.get_by_label("or a URL").fill(media.url(speech_video.path.name))
        await page.get_by_role("button", name="Use URL").click()
        await page.wait_for_function("() => document.getElementById('player').readyState >= 1")  # a preview
        await page.get_by_label("In (s)").fill("5")
        await page.get_by_label("Out (s)").fill("12.5")
        await page.get_by_label("Subtitles").check()
        await page.get_by_label("Language").fill("en")
        await page.get_by_role("button", name="Make the clip").click()
        await wait_done(page, SUBS_JOB_TIMEOUT_MS)
        clip = await download(page, "Download the clip (MP4)", tmp_path / "clip.mp4")
        srt = await download(page, "Subtitles (SRT)", tmp_path / "clip.srt")
        await download(page, "Subtitles (WebVTT)", tmp_path / "clip.vtt")
        await page.wait_for_function("() => document.querySelectorAll('#result track').length === 1")  # on the clip
        assert errors.seen == []

    assert float(probe(clip)["format"]["duration"]) == pytest.approx(7.5, abs=0.1)
    assert any(word in srt.read_text().lower() for word in speech_video.text.lower().split())


async def test_frame_steps_follow_the_frame_rate_measured_while_playing(
    settings: Settings, resources: Resources, browser: Any, tmp_path: Path
) -> None:
    source = make_source(tmp_path / "25fps.mp4", seconds=4, fps="25")
    token = await make_key(resources.db, "web")
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        page, errors = await open_page(browser, url, token)
        await page.get_by_label("Video file").set_input_files(source)
        assert await page.get_by_label("Frames per second").input_value() == "30"  # until it plays
        # slowly, so a loaded machine still presents frames one after another
        await page.evaluate("() => { const v = document.getElementById('player'); v.loop = true; "
                            "v.playbackRate = 0.25; v.play(); }")
        await page.wait_for_function("() => document.getElementById('fps').value === '25'")
        await page.evaluate("() => document.getElementById('player').pause()")
        await seek(page, 1.0)
        await page.locator("#player").focus()
        await page.keyboard.press("ArrowRight")
        await page.keyboard.press("i")
        assert await page.get_by_label("In (s)").input_value() == "1.040"  # one frame at 25 fps
        assert errors.seen == []
async def test_page_needs_no_key_has_a_strict_policy_and_the_bucket_allows_only_its_origin(
    settings: Settings, resources: Resources
) -> None:
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SEC) as http:
            page = await http.get(f"{url}/")
            script = await http.get(f"{url}/web/app.js")
            api = await http.get(f"{url}/api/usage")
            slot_url = await resources.storage.signed_put_url("uploads/x/y/z.mp4", 60, "video/mp4", 1)
            preflights = {
                origin: await http.options(slot_url, headers={
                    "Origin": origin, "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "content-type,if-none-match",
                })
                for origin in (url, "http://elsewhere.example")
            }
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-eval" not in policy
    assert settings.public_s3_endpoint.rstrip("/") in policy  # connect-src: uploads go to the bucket
    assert "<script>" not in page.text and 'src="/web/app.js"' in page.text  # no inline script
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert api.status_code == 401 and api.json()["error"]["code"] == "auth_required"
    assert preflights[url].status_code == 200
    assert preflights[url].headers["access-control-allow-origin"] == url
    assert "access-control-allow-origin" not in preflights["http://elsewhere.example"].headers


class ContractStream:
    """Stands in for `GET /api/jobs/{id}/events` (helper `sse` builds the real one) with the contract's bytes:
    the first connection gets a progress event and drops; the resumed one (Last-Event-ID) gets the `end` event
    with the job's real view, read from the real gateway once the job ended."""

    def __init__(self, gateway_url: str, token: str) -> None:
        self.gateway_url, self.token = gateway_url, token
        self.resumed_after: list[str | None] = []

    async def handle(self, route: Any) -> None:
        job_id = route.request.url.rsplit("/", 2)[-2]
        self.resumed_after.append(await route.request.header_value("last-event-id"))
        if len(self.resumed_after) == 1:
            progress = {"jobId": job_id, "status": "processing", "stage": "trim", "pct": 0.5}
            await route.fulfill(status=200, headers=SSE_HEADERS, body=f": ping\n\nid: 1\nevent: progress\n"
                                f"data: {json.dumps(progress)}\n\n")
            return
        view = await self._ended_view(job_id)
        await route.fulfill(status=200, headers=SSE_HEADERS, body=f"id: 2\nevent: end\ndata: {view}\n\n")

    async def _ended_view(self, job_id: str) -> str:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SEC) as http, asyncio.timeout(JOB_TIMEOUT_SEC):
            while True:
                response = await http.get(f"{self.gateway_url}/api/jobs/{job_id}",
                                          headers={"Authorization": f"Bearer {self.token}"})
                if response.json()["status"] in ("done", "failed", "canceled"):
                    return response.text
                await asyncio.sleep(POLL_SEC)


async def test_progress_from_the_event_stream_resumed_after_a_drop(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path, browser: Any, tmp_path: Path
) -> None:
    token = await make_key(resources.db, "web")
    workers.start()
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        page, errors = await open_page(browser, url, token)
        stream = ContractStream(url, token)
        await page.route("**/api/jobs/*/events", stream.handle)
        polls: list[str] = []
        page.on("request", lambda request: polls.append(request.url)
                if re.search(r"/api/jobs/[^/]+$", request.url) and request.method == "GET" else None)
        await page.get_by_label("Video file").set_input_files(sample_video)
        await page.get_by_label("In (s)").fill("1")
        await page.get_by_label("Out (s)").fill("4")
        await page.get_by_role("button", name="Make the clip").click()
        await async_api.expect(page.locator("#job-state")).to_have_text("processing: trim")  # the progress event
        assert await page.locator("#progress").evaluate("bar => bar.value") == 0.5
        await wait_done(page, JOB_TIMEOUT_MS)
        clip = await download(page, "Download the clip (MP4)", tmp_path / "clip.mp4")
        assert errors.seen == []

    assert stream.resumed_after == [None, "1"]  # dropped after event 1, resumed after it
    assert polls == []  # the page followed the stream, it did not poll
    assert float(probe(clip)["format"]["duration"]) == pytest.approx(3.0, abs=0.1)


async def test_a_key_in_the_link_is_kept_and_leaves_the_address_bar(
    settings: Settings, resources: Resources, browser: Any
) -> None:
    token = await make_key(resources.db, "web")
    port = free_port()
    with gateway_process(page_settings(settings, port), port) as url:
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        await page.goto(f"{url}/#key={token}")  # what `make run` prints
        await async_api.expect(page.locator("#key-state")).to_have_text(re.compile(r"^key OK \(id [0-9a-f]+\)$"))
        assert page.url == f"{url}/"  # the key is not left in the address bar (nor in the history)
        await page.reload()  # kept in localStorage
        await async_api.expect(page.locator("#key-state")).to_have_text(re.compile(r"^key OK \(id [0-9a-f]+\)$"))
        other = await make_key(resources.db, "another")
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))  # a link may not swap it unasked
        await page.goto(f"{url}/?once#key={other}")  # another document: the page reads its fragment
        await async_api.expect(page.locator("#key-state")).to_have_text(f"key OK (id {split_token(token)[0]})")
        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.goto(f"{url}/?again#key={other}")
        await async_api.expect(page.locator("#key-state")).to_have_text(f"key OK (id {split_token(other)[0]})")
        await page.get_by_label("API key").fill("cj_000000000000_wrong")
        await page.get_by_role("button", name="Save key").click()
        await async_api.expect(page.locator("#key-state")).to_have_text(re.compile(r"^key refused: auth_invalid"))
