"""Frame-accurate cuts end to end: each case is a real job (gateway → fetcher → trimmer or encoder → uploader
on real NATS, PostgreSQL, S3 and ffmpeg) over a small generated source, and its clip is checked frame by frame against a
decode of the source over the same range.

All cases share one stack and run at once (their media checks too), to keep the module fast on 2 cores.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from shared.jobs.contracts import ProgressEvent
from shared.runtime.resources import Resources
from tests.conftest import Workers, wait_for_job
from tests.frames import audio_lag, decode_errors, decoded_frames, psnr_per_frame
from tests.http_source import MediaServer
from tests.media import keyframe_times, make_source, probe
from tests.test_clip_pipeline import download, upload

MIN_PSNR_DB = 35.0  # re-encoded frames against the source's
EPS_SEC = 0.002  # container rounding
END_REENCODED_FRAMES = 3  # at most this many frames before endSec may be re-encoded (B-frame reordering)
CHECK_THREADS = 2  # the machine's cores
JOBS_TIMEOUT_SEC = 150.0


@dataclass(frozen=True)
class Case:
    """One clip request over one generated source, and the path it must take."""

    name: str
    start: float
    end: float
    path: str  # cut path the job must report
    source: dict[str, Any] = field(default_factory=dict)  # make_source arguments
    frame_sec: float = 1 / 30  # the source's longest frame interval: "one frame" in the checks
    suffix: str = ".mp4"
    upload: bool = False  # an upload, read in place (no staged range) instead of a URL source


CASES = [
    Case("gop_1s_bframes", 2.51, 4.8, "smart", {"seconds": 6}),
    Case("gop_10s", 1.3, 10.6, "smart", {"seconds": 12, "gop": 300}),
    Case("upload_read_in_place", 2.51, 4.8, "smart", {"seconds": 6}, upload=True),
    Case("start_earliest", 0.0, 1.5, "copy", {"seconds": 6, "bframes": 0}),
    Case("start_earliest_bframes", 0.0, 1.55, "smart", {"seconds": 6}),
    Case("start_on_keyframe", 2.0, 4.5, "copy", {"seconds": 6, "bframes": 0}),
    Case("shorter_than_gop", 1.8, 2.6, "smart", {"seconds": 6, "gop": 60}),
    Case("last_seconds", 4.4, 6.0, "smart", {"seconds": 6}),
    Case("variable_frame_rate", 2.55, 5.6, "smart", {"seconds": 6, "vfr": True}, frame_sec=0.1),
    Case("rotation", 1.5, 3.7, "smart", {"seconds": 5, "rotate": 90}),
    Case("fps_25", 1.53, 3.7, "smart", {"seconds": 5, "fps": "25", "gop": 25}, frame_sec=1 / 25),
    Case("fps_29_97", 1.5, 3.7, "smart", {"seconds": 5, "fps": "30000/1001"}, frame_sec=1001 / 30000),
    Case("fps_60", 1.51, 3.7, "smart", {"seconds": 5, "fps": "60", "gop": 60}, frame_sec=1 / 60),
    Case("video_only", 1.5, 3.7, "smart", {"seconds": 5, "audio": False}),
    Case("audio_only", 1.5, 3.7, "copy", {"seconds": 5, "video": False}, suffix=".m4a"),
    Case("no_keyframe_in_clip", 2.3, 3.2, "reencode", {"seconds": 6, "gop": 300}),
    Case("open_gop", 2.51, 4.8, "reencode", {"seconds": 6, "open_gop": True}),
]
# HEVC and VP9: heads and tails by libx265 / libvpx-vp9 (`shared.media.codecs`); a test of their own, to keep
# each under the test timeout on 2 busy cores
CODEC_CASES = [
    Case("hevc_start_on_keyframe", 2.0, 3.7, "copy", {"seconds": 5, "codec": "libx265", "bframes": 0}),
    # HEVC with B-frames: x265 head and tail with in-band parameter sets, the copied run with its own (hev1)
    Case("hevc_mid_gop", 1.5, 3.7, "smart", {"seconds": 5, "codec": "libx265"}),
    Case("hevc_main10_upload", 1.53, 3.7, "smart", {"seconds": 5, "codec": "libx265", "pix_fmt": "yuv420p10le"},
         upload=True),
    Case("vp9_opus_webm_mid_gop", 1.5, 3.5, "smart", {"seconds": 4, "codec": "libvpx-vp9", "gop": 30},
         suffix=".webm"),
    Case("vp9_altref_webm_mid_gop", 1.55, 3.45, "smart",
         {"seconds": 4, "codec": "libvpx-vp9", "gop": 30, "altref": True}, suffix=".webm"),
    Case("vp9_opus_webm_from_start", 0.0, 3.5, "copy", {"seconds": 4, "codec": "libvpx-vp9", "gop": 120},
         suffix=".webm"),
]


def _check(case: Case, clip: Path, source: Path, job: dict[str, Any]) -> list[str]:
    """Everything wrong with one case's clip (empty when right)."""
    problems: list[str] = []
    result, one = job["result"], case.frame_sec
    if result.get("cutPath", "copy") != case.path:
        problems.append(f"cut path {result.get('cutPath', 'copy')}, wanted {case.path}")
    start = result["actualStartSec"]
    earliest = keyframe_times(source)[0] if case.source.get("video", True) else 0.0  # the first frame
    if not case.start - one - EPS_SEC < start <= max(case.start, earliest) + EPS_SEC:
        problems.append(f"starts at {start}, not the frame shown at {case.start}")
    errors = decode_errors(clip)
    if errors:
        problems.append(f"ffmpeg -v error printed: {errors[:300]}")
    info = probe(clip)
    streams = {s["codec_type"]: s for s in info["streams"]}
    tag = streams["video"]["codec_tag_string"] if "video" in streams else ""
    if case.source.get("codec") == "libx265" and case.path == "smart" and tag != "hev1":
        problems.append(f"HEVC pieces with their own parameter sets in-band are tagged {tag}, not hev1")
    if case.source.get("video", True):
        problems += _check_frames(case, clip, source, start, streams["video"])
    if case.source.get("audio", True):
        problems += _check_sync(case, clip, source, start, streams)
    return problems


def _check_frames(case: Case, clip: Path, source: Path, start: float, video: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    one = case.frame_sec
    wanted = decoded_frames(source, start - EPS_SEC, case.end - EPS_SEC)
    got = decoded_frames(clip)
    if len(got) != len(wanted):
        return [f"{len(got)} frames, the source has {len(wanted)} in [{start}, {case.end})"]
    moved = [(g.pts, w.pts) for g, w in zip(got, wanted, strict=True) if abs(g.pts - w.pts) > EPS_SEC]
    if moved:
        problems.append(f"frame times differ from the source's (clip, source): {moved[:3]}")
    if float(video.get("start_time", 0)) > EPS_SEC:
        problems.append(f"video starts at {video['start_time']}")
    last_end = start + got[-1].pts + one
    if abs(last_end - case.end) > one + EPS_SEC:
        problems.append(f"last frame ends at {last_end:.4f}, endSec is {case.end}")
    if abs(float(video["duration"]) - (case.end - start)) > one + EPS_SEC:
        problems.append(f"video lasts {video['duration']}, wanted {case.end - start:.4f} within a frame")
    keys = [k for k in keyframe_times(source) if start - EPS_SEC <= k < case.end]
    copied_from = keys[0] if keys else case.end
    copied_to = case.end - END_REENCODED_FRAMES * one
    differing = [i for i, (g, w) in enumerate(zip(got, wanted, strict=True)) if g.md5 != w.md5]
    if case.path == "copy" and differing:
        problems.append(f"copy path but frames {differing[:5]} differ from the source")
    not_exact = [i for i in differing if copied_from - EPS_SEC <= start + wanted[i].pts < copied_to
                 and case.path != "reencode"]  # a full re-encode copies no frame
    if not_exact:
        problems.append(f"copied frames {not_exact[:5]} are not bit-identical to the source's")
    if differing:
        psnr = psnr_per_frame(clip, source, start - EPS_SEC, case.end - EPS_SEC)
        low = [(i, round(psnr[i], 1)) for i in differing if i < len(psnr) and psnr[i] < MIN_PSNR_DB]
        if low or len(psnr) != len(got):
            problems.append(f"re-encoded frames under {MIN_PSNR_DB} dB: {low[:5]} ({len(psnr)} compared)")
    return problems


def _check_sync(case: Case, clip: Path, source: Path, start: float, streams: dict[str, Any]) -> list[str]:
    """The clip's audio at its first sample is the source's audio at the same source time (within a frame)."""
    audio_start = float(streams["audio"].get("start_time", 0))
    video_start = float(streams["video"].get("start_time", 0)) if "video" in streams else 0.0
    lag = audio_lag(clip, source, start + audio_start - video_start)
    if abs(lag) > case.frame_sec:
        return [f"audio is {lag * 1000:.1f} ms off the video (audio starts at {audio_start})"]
    return []


@pytest.mark.settings(worker_concurrency=4)
async def test_frame_accurate_cuts(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, media_dir: Path, tmp_path: Path
) -> None:
    await _run_cases(CASES, client, workers, resources, media_dir, tmp_path)


@pytest.mark.settings(worker_concurrency=4)
async def test_frame_accurate_hevc_and_vp9_cuts(
    client: AsyncTestClient[Any], workers: Workers, resources: Resources, media_dir: Path, tmp_path: Path
) -> None:
    await _run_cases(CODEC_CASES, client, workers, resources, media_dir, tmp_path)


async def _run_cases(
    cases: list[Case], client: AsyncTestClient[Any], workers: Workers, resources: Resources, media_dir: Path,
    tmp_path: Path,
) -> None:
    """Every case as a job at once over one stack, then every clip checked."""
    sources = media_dir / "frame-accuracy"
    sources.mkdir(exist_ok=True)
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        made = [pool.submit(make_source, sources / f"{c.name}{c.suffix}", **c.source) for c in cases]
        paths = [m.result() for m in made]
    received: dict[str, list[float]] = {}

    async def keep(msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=ProgressEvent)
        received.setdefault(event.job_id, []).append(event.pct)

    await resources.nc.subscribe(resources.subjects.progress("*"), cb=keep)
    workers.start()
    with MediaServer(sources) as origin:
        ids = []
        for case, path in zip(cases, paths, strict=True):
            source = ({"type": "upload", "key": await upload(client, path)} if case.upload
                      else {"type": "url", "url": origin.url(path.name)})
            response = await client.post("/api/jobs", json={
                "source": source, "startSec": case.start, "endSec": case.end,
            })
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        jobs = await asyncio.gather(*(wait_for_job(client, i, timeout=JOBS_TIMEOUT_SEC) for i in ids))
    failed = {c.name: (j.get("errorCode"), j.get("errorMessage")) for c, j in zip(cases, jobs, strict=True)
              if j["status"] != "done"}
    assert not failed, failed
    clips = [await download(j["urls"]["video"], tmp_path / f"{c.name}.mp4") for c, j in zip(cases, jobs, strict=True)]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        checks = [pool.submit(_check, *args) for args in zip(cases, clips, paths, jobs, strict=True)]
        problems = {c.name: p for c, check in zip(cases, checks, strict=True) if (p := check.result())}
    assert not problems, "\n".join(f"{name}: {p}" for name, p in problems.items())
    assert all(j["progress"] == 1.0 for j in jobs)
    assert all(received.get(i) == sorted(received[i]) for i in ids), "progress went backwards"
