"""Every open of user media is guarded: media that names other resources (an HLS playlist, an ffconcat list)
makes no open reach them, on uploads, URL sources and yt-dlp pages; the job fails with a stable code and the
internal server named in the media sees no connection at all (issue 12, items 1 and 10)."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.asr.audio import read_audio
from shared.errors import ClipError
from shared.media.cut import copy_cut
from shared.media.encode import encode_clip
from shared.media.inputs import FORMAT_WHITELIST, demuxer, guard_inputs, staged_demuxer
from shared.media.keyframes import cut_layout, frame_shown_at
from shared.media.probe import probe
from shared.media.smartcut import cut_frames
from shared.net.ytdlp import check_formats
from shared.settings import load_settings
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer
from tests.test_clip_pipeline import upload
from tests.test_ssrf import Listener

LOCAL_PAGES = "127.0.0.1"  # yt-dlp's allowlist in these tests: the local server only


def playlist(segment: str) -> str:
    """A VOD HLS playlist of one segment at `segment`."""
    return ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:10.0,\n{segment}\n#EXT-X-ENDLIST\n")


def concat_list(entry: str) -> str:
    return f"ffconcat version 1.0\nfile {entry}\nduration 10\n"


@pytest.fixture
def victim() -> Iterator[Listener]:
    """The internal server an attacker wants reached (counts connections)."""
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


def _evil_files(folder: Path, port: int) -> dict[str, Path]:
    """Media files whose nested opens would reach 127.0.0.1:port, each way a demuxer could."""
    files = {
        "hls_http": ("evil.m3u8", playlist(f"http://127.0.0.1:{port}/secret.ts")),
        "hls_httpproxy": ("proxy.m3u8", playlist(f"httpproxy://127.0.0.1:{port}/secret.ts")),
        "hls_as_mp4": ("renamed.mp4", playlist(f"http://127.0.0.1:{port}/secret.ts")),
        "ffconcat_relative": ("relative.ffconcat", concat_list("secret.mp4")),
    }
    out = {}
    for name, (file_name, text) in files.items():
        path = folder / file_name
        path.write_text(text)
        out[name] = path
    return out


OPENS: dict[str, Callable[[str, Path], Awaitable[Any]]] = {
    "probe": lambda src, tmp: probe(src, keyframe_at=1.0),
    "cut_layout": lambda src, tmp: cut_layout(src, 1.0, 2.0),
    "frame_shown_at": lambda src, tmp: frame_shown_at(src, 1.0),
    "copy_cut": lambda src, tmp: copy_cut(src, tmp / "o.mp4", seek_sec=0, duration_sec=1),
    "encode_clip": lambda src, tmp: encode_clip(src, tmp / "e.mp4", seek_sec=0, duration_sec=1, streams=[],
                                                encoder=None, threads=1),
    "read_audio": lambda src, tmp: read_audio(src, start_sec=0, duration_sec=1),
    "cut_frames": lambda src, tmp: cut_frames(src, tmp / "f.mp4", start=1.0, end=2.0, audio=True, scratch=tmp),
}


@pytest.mark.parametrize("kind", ["hls_http", "hls_httpproxy", "hls_as_mp4"])
@pytest.mark.parametrize("open_name", list(OPENS))
async def test_every_open_refuses_media_that_names_other_resources(
    kind: str, open_name: str, victim: Listener, tmp_path: Path
) -> None:
    """Each way the stages open media (PyAV and ffmpeg, local file or storage URL alike) refuses a playlist or
    concat list: it fails, and nothing it names is contacted."""
    source = _evil_files(tmp_path, victim.port)[kind]
    with pytest.raises(ClipError):
        await OPENS[open_name](str(source), tmp_path)
    assert victim.connections == 0


async def _upload_job(client: AsyncTestClient[Any], path: Path) -> dict[str, Any]:
    key = await upload(client, path)
    response = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": key}, "startSec": 1, "endSec": 3,
    })
    assert response.status_code == 202, response.text
    return await wait_for_job(client, response.json()["id"])


@pytest.mark.parametrize("kind", ["hls_http", "hls_httpproxy"])
async def test_uploaded_playlist_or_concat_list_fails_without_a_connection(
    client: AsyncTestClient[Any], workers: Workers, victim: Listener, tmp_path: Path, kind: str
) -> None:
    workers.start()
    job = await _upload_job(client, _evil_files(tmp_path, victim.port)[kind])
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unreadable", 1), job
    assert "upload a media file" in job["errorMessage"]
    assert victim.connections == 0


@pytest.mark.parametrize("kind", ["hls_http", "hls_httpproxy", "ffconcat_relative"])
async def test_url_source_playlist_or_concat_list_fails_without_a_connection(
    client: AsyncTestClient[Any], workers: Workers, victim: Listener, tmp_path: Path, sample_video: Path,
    kind: str,
) -> None:
    """A URL serving a playlist whose segment is `httpproxy://` (a direct TCP connection past the proxy) or a
    loopback URL, or a concat list whose entry is relative to it (its nested open would skip the proxy): the
    job fails, the victim sees no connection and the origin no request for what the list names."""
    workers.start()
    files = _evil_files(tmp_path, victim.port)
    shutil.copy(sample_video, tmp_path / "secret.mp4")
    with MediaServer(tmp_path) as origin:
        response = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": origin.url(files[kind].name)}, "startSec": 1, "endSec": 3,
        })
        assert response.status_code == 202, response.text
        job = await wait_for_job(client, response.json()["id"])
        paths = [path for _, path, _ in origin.requests]
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unreadable", 1), job
    assert victim.connections == 0
    assert paths and all(p == f"/{files[kind].name}" for p in paths), paths


@pytest.mark.settings(fetch_allowed_domains=LOCAL_PAGES)
@pytest.mark.parametrize("scheme", ["tcp", "httpproxy", "hls"])
async def test_ytdlp_format_url_outside_http_is_refused(
    client: AsyncTestClient[Any], workers: Workers, victim: Listener, tmp_path: Path, scheme: str
) -> None:
    """A page whose video is `tcp://` or `httpproxy://` to an internal server, or an HLS playlist naming one:
    the job fails before anything opens it, with no connection to that server."""
    workers.start()
    target = {"tcp": f"tcp://127.0.0.1:{victim.port}/v.mp4", "httpproxy": f"httpproxy://127.0.0.1:{victim.port}/v.mp4",
              "hls": "evil.m3u8"}[scheme]
    _evil_files(tmp_path, victim.port)
    (tmp_path / "page.html").write_text(
        f'<!DOCTYPE html><html><head><title>c</title></head><body><video src="{target}"></video></body></html>')
    with MediaServer(tmp_path) as origin:
        response = await client.post("/api/jobs", json={
            "source": {"type": "youtube", "url": origin.url("page.html")}, "startSec": 1, "endSec": 3,
        })
        assert response.status_code == 202, response.text
        job = await wait_for_job(client, response.json()["id"])
    assert job["status"] == "failed" and job["errorCode"] in ("fetch_refused", "source_unsupported"), job
    assert job["attempts"] == 1
    assert victim.connections == 0


@pytest.mark.parametrize(("fmt", "code"), [
    ({"url": "tcp://127.0.0.1:9/v.mp4", "protocol": "https"}, "fetch_refused"),
    ({"url": "httpproxy://127.0.0.1:9/v.mp4", "protocol": "http"}, "fetch_refused"),
    ({"url": "http://127.0.0.1:9/v.mp4", "protocol": "http"}, "fetch_refused"),
    ({"url": "https://93.184.215.14/v.mp4", "protocol": "https",
      "fragments": [{"url": "tcp://127.0.0.1:9/f1"}]}, "fetch_refused"),
    ({"url": "https://93.184.215.14/v.m3u8", "protocol": "m3u8_native"}, "source_unsupported"),
    ({"url": "https://93.184.215.14/v.mpd", "protocol": "http_dash_segments",
      "fragments": [{"url": "https://93.184.215.14/f1"}]}, "source_unsupported"),
])
async def test_every_url_ytdlp_returns_is_checked(fmt: dict[str, Any], code: str) -> None:
    """The chosen formats' URLs (and fragment URLs) pass the guard, and only plain http(s) files are read."""
    strict = load_settings({})  # IP literals: nothing is resolved, and a check connects nowhere
    with pytest.raises(ClipError) as caught:
        await check_formats([fmt], strict)
    assert caught.value.code == code, caught.value.message


async def test_empty_upload_says_so(client: AsyncTestClient[Any], workers: Workers, tmp_path: Path) -> None:
    workers.start("fetch")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    job = await _upload_job(client, empty)
    assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "source_unreadable", 1), job
    assert "the upload is empty" in job["errorMessage"]


@pytest.mark.parametrize(("precision", "start", "end"), [
    ("auto", 13.0, 16.0), ("keyframe", 13.0, 16.0), ("auto", 7.0, 12.0), ("keyframe", 7.0, 12.0),
])
async def test_truncated_mp4_fails_once(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path, tmp_path: Path, precision: str,
    start: float, end: float,
) -> None:
    """An MP4 cut short (its index names samples past its data) with the range past the data: one permanent
    failure with a clear code, not three tries of a short output."""
    workers.start()
    data = sample_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[:len(data) // 2])  # +faststart: the index first, then about 10 s of data
    key = await upload(client, truncated)
    response = await client.post("/api/jobs", json={
        "source": {"type": "upload", "key": key}, "startSec": start, "endSec": end, "precision": precision,
    })
    assert response.status_code == 202, response.text
    job = await wait_for_job(client, response.json()["id"])
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert job["errorCode"] == "source_truncated" and "truncated" in job["errorMessage"], job


def test_whitelists_go_before_every_input_once() -> None:
    """Each input gets the whitelists unless its own options set them (the proxy's, the concat list's)."""
    args = guard_inputs(["-ss", "1", "-i", "/tmp/a.mp4", "-protocol_whitelist", "http,tcp", "-i",
                         "http://127.0.0.1:8333/b", "-c", "copy", "out.mp4"])
    assert args == [
        "-ss", "1", "-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST, "-i", "/tmp/a.mp4",
        "-protocol_whitelist", "http,tcp", "-format_whitelist", FORMAT_WHITELIST, "-i", "http://127.0.0.1:8333/b",
        "-c", "copy", "out.mp4",
    ]
    assert not {"hls", "concat", "image2", "sdp", "rtsp", "dash", "tee", "lavfi"} & set(FORMAT_WHITELIST.split(","))


def test_the_sniffed_demuxer_is_what_later_opens_force() -> None:
    assert demuxer("mov,mp4,m4a,3gp,3g2,mj2") == "mov" and demuxer("matroska,webm") == "matroska"
    assert staged_demuxer("staging/j1/source.mkv", "j1", "mpegts") == "matroska"  # clipjet staged it
    assert staged_demuxer("uploads/x/source.mkv", "j1", "mpegts") == "mpegts"  # the upload, read in place
    for container in ("hls", "concat", ""):
        with pytest.raises(ClipError) as caught:
            demuxer(container)
        assert caught.value.code == "source_unsupported"


async def test_a_forced_demuxer_is_used(tmp_path: Path, sample_video: Path) -> None:
    """Later opens read the bytes as the sniffed demuxer, whatever else they would probe as."""
    await copy_cut(str(sample_video), tmp_path / "ok.mp4", seek_sec=0, duration_sec=1, fmt="mov")
    assert (await probe(str(sample_video), fmt="mov")).container.startswith("mov")
    with pytest.raises(ClipError):
        await copy_cut(str(sample_video), tmp_path / "no.mp4", seek_sec=0, duration_sec=1, fmt="mpegts")
    with pytest.raises(ClipError):
        await probe(str(sample_video), fmt="wav")
