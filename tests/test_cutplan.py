"""Which path a cut takes (copy, smart, re-encode), decided over real media generated with ffmpeg and probed
the way the fetcher probes it; and a job whose clip needs a full re-encode is routed to the encoder."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.jobs.contracts import Precision
from shared.jobs.pipeline import ENCODE, STAGES
from shared.media.codecs import splice_pix_fmts
from shared.media.cutplan import decide_cut, probe_and_choose
from shared.media.keyframes import cut_layout
from shared.media.probe import probe
from tests.conftest import Workers
from tests.http_source import MediaServer
from tests.jobflow import run_url_job
from tests.media import FFMPEG_TIMEOUT_SEC, make_source


@dataclass(frozen=True)
class PlanCase:
    """A source, a range and a precision, and the decision they must give."""

    name: str
    start: float
    end: float
    path: str
    reason: str
    source: dict[str, Any] = field(default_factory=dict)
    precision: Precision = "auto"
    suffix: str = ".mp4"


PLAN_CASES = [
    PlanCase("mid_gop", 2.5, 4.5, "smart", "start_between_keyframes", {"seconds": 5}),
    PlanCase("on_keyframe", 2.0, 4.5, "copy", "start_on_keyframe", {"seconds": 5, "bframes": 0}),
    PlanCase("keyframe_precision", 2.5, 4.5, "copy", "keyframe_precision", {"seconds": 5}, precision="keyframe"),
    PlanCase("frame_precision", 2.5, 4.5, "smart", "start_between_keyframes", {"seconds": 5}, precision="frame"),
    PlanCase("variable_frame_rate", 2.55, 5.6, "smart", "variable_frame_rate", {"seconds": 6, "vfr": True}),
    PlanCase("no_keyframe_in_clip", 2.3, 3.2, "reencode", "no_keyframe_in_clip", {"seconds": 5, "gop": 60}),
    PlanCase("open_gop", 2.5, 4.5, "reencode", "open_gop", {"seconds": 5, "open_gop": True}),
    PlanCase("hevc_mid_gop", 1.5, 3.7, "smart", "start_between_keyframes", {"seconds": 5, "codec": "libx265"}),
    PlanCase("hevc_main10_mid_gop", 1.5, 3.7, "smart", "start_between_keyframes",
             {"seconds": 5, "codec": "libx265", "pix_fmt": "yuv420p10le"}),
    PlanCase("hevc_on_keyframe", 2.0, 3.7, "copy", "start_on_keyframe",
             {"seconds": 5, "codec": "libx265", "bframes": 0}),
    # WebM's millisecond timestamps (33, 33, 34 ms) are a constant rate, not `variable_frame_rate`
    PlanCase("vp9_opus_webm_mid_gop", 1.5, 3.5, "smart", "start_between_keyframes",
             {"seconds": 4, "codec": "libvpx-vp9"}, suffix=".webm"),
    PlanCase("vp9_altref_webm_mid_gop", 1.5, 3.5, "smart", "start_between_keyframes",
             {"seconds": 4, "codec": "libvpx-vp9", "altref": True}, suffix=".webm"),
    PlanCase("vp9_opus_webm_on_keyframe", 0.0, 3.5, "copy", "start_on_keyframe",
             {"seconds": 4, "codec": "libvpx-vp9", "gop": 120}, suffix=".webm"),
    PlanCase("audio_only", 1.5, 3.5, "copy", "audio_only", {"seconds": 4, "video": False}, suffix=".m4a"),
]


def _two_video_streams(path: Path, single: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(single), "-i", str(single), "-map", "0:v", "-map", "1:v",
                    "-map", "0:a", "-c", "copy", str(path)], check=True, capture_output=True,
                   timeout=FFMPEG_TIMEOUT_SEC)
    return path


def _flv(path: Path, single: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(single), "-c", "copy", str(path)], check=True,
                   capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


def _mpeg2_ts(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=4",
                    "-c:v", "mpeg2video", "-g", "30", str(path)], check=True, capture_output=True,
                   timeout=FFMPEG_TIMEOUT_SEC)
    return path


@pytest.fixture(scope="module")
def plan_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cutplan")
    with ThreadPoolExecutor(2) as pool:
        made = {c.name: pool.submit(make_source, root / f"{c.name}{c.suffix}", **c.source) for c in PLAN_CASES}
        paths = {name: future.result() for name, future in made.items()}
    paths["several_video_streams"] = _two_video_streams(root / "two.mp4", paths["mid_gop"])
    paths["mpeg2_ts"] = _mpeg2_ts(root / "mpeg2.ts")
    paths["flv"] = _flv(root / "same.flv", paths["mid_gop"])
    return paths


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.name for c in PLAN_CASES])
async def test_cut_path_over_probed_media(case: PlanCase, plan_sources: dict[str, Path]) -> None:
    media = str(plan_sources[case.name])
    _, decision = await probe_and_choose(media, case.precision, case.start, case.end)
    assert (decision.path, decision.reason) == (case.path, case.reason)


@pytest.mark.parametrize(("name", "reason"), [("several_video_streams", "several_video_streams"),
                                              ("mpeg2_ts", "codec_not_mp4")])
async def test_layouts_a_smart_cut_cannot_take(name: str, reason: str, plan_sources: dict[str, Path]) -> None:
    media = str(plan_sources[name])
    _, decision = await probe_and_choose(media, "auto", 1.5, 3.5)
    assert (decision.path, decision.reason) == ("reencode", reason)


async def test_container_without_stream_ids_is_smart_cut_only_when_staged(plan_sources: dict[str, Path]) -> None:
    """FLV numbers no stream: read in place (an upload) the join could not name the video; staged it is MP4."""
    media = str(plan_sources["flv"])
    _, in_place = await probe_and_choose(media, "auto", 2.5, 4.5, staged=False)
    _, staged = await probe_and_choose(media, "auto", 2.5, 4.5, staged=True)
    assert (in_place.path, in_place.reason, staged.path) == ("reencode", "container_stream_ids", "smart")


async def test_no_matching_encoder_means_reencode(plan_sources: dict[str, Path]) -> None:
    """The same H.264 layout that smart-cuts here is re-encoded where ffmpeg has no libx264."""
    media = str(plan_sources["mid_gop"])
    info = await probe(media)
    layout = await cut_layout(media, 2.5, 4.5)
    with_x264 = decide_cut("auto", info.streams, layout, fits_mp4=True, encoders=frozenset({"libx264"}))
    without = decide_cut("auto", info.streams, layout, fits_mp4=True, encoders=frozenset({"mpeg4"}))
    assert (with_x264.path, without.path, without.reason) == ("smart", "reencode", "no_matching_encoder")
    assert layout.first_frame == pytest.approx(2.5, abs=1e-3) and layout.join == pytest.approx(3.0, abs=1e-3)


async def test_job_needing_a_full_reencode_goes_to_the_encoder(
    client: AsyncTestClient[Any], workers: Workers, plan_sources: dict[str, Path]
) -> None:
    """No keyframe inside the clip: the fetcher routes the job to the encoder stage, or, where this build has
    none, fails it at once with a code that says so (never a wrong cut)."""
    workers.start()
    source = plan_sources["no_keyframe_in_clip"]
    with MediaServer(source.parent) as origin:
        job = await run_url_job(client, origin.url(source.name), startSec=2.3, endSec=3.2)
    if ENCODE in STAGES:
        assert (job["status"], job["result"]["cutPath"]) == ("done", "reencode")
    else:
        assert (job["status"], job["errorCode"], job["attempts"]) == ("failed", "stage_unavailable", 1)
        assert "no_keyframe_in_clip" in job["errorMessage"]


TESTSRC = "testsrc2=size=320x180:rate=30:duration=4"
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
X265_CLOSED = "keyint=30:min-keyint=30:scenecut=0:open-gop=0:log-level=error"
# streams whose re-encoded frames could not join their copied ones: each must take the full re-encode, and say why
FALLBACKS = {
    "interlaced": ("interlaced_h264.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-sc_threshold", "0",
                                           "-flags", "+ildct+ilme", "-x264-params", "tff=1", "-pix_fmt", "yuv420p"]),
    "hdr_pq_transfer": ("hdr_pq.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                       "-color_trc", "smpte2084", "-color_primaries", "bt2020",
                                       "-colorspace", "bt2020nc", "-x265-params", X265_CLOSED]),
    "hdr_mastering_display": ("hdr_sei.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                              "-x265-params", f"{X265_CLOSED}:hdr10=1:master-display={MASTER_DISPLAY}"
                                              ":max-cll=1000,400"]),
    "hevc_range_extensions": ("hevc_444.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv444p",
                                               "-x265-params", X265_CLOSED]),
    "vp9_profile_1": ("vp9_444.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "30",
                                       "-pix_fmt", "yuv444p"]),
    "mpeg4_part2": ("mpeg4.mp4", ["-c:v", "mpeg4", "-g", "30"]),
}
FALLBACK_REASONS = {
    "interlaced": "interlaced", "hdr_pq_transfer": "hdr_metadata", "hdr_mastering_display": "hdr_metadata",
    "hevc_range_extensions": "profile_not_spliceable", "vp9_profile_1": "profile_not_spliceable",
    "mpeg4_part2": "codec_not_spliceable",
}


def _encode(path: Path, video_args: list[str]) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", TESTSRC, *video_args, str(path)], check=True,
                   capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return path


@pytest.fixture(scope="module")
def fallback_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fallbacks")
    with ThreadPoolExecutor(2) as pool:
        made = {name: pool.submit(_encode, root / file, args) for name, (file, args) in FALLBACKS.items()}
        return {name: future.result() for name, future in made.items()}


@pytest.mark.parametrize("name", list(FALLBACKS))
async def test_streams_that_cannot_be_spliced_take_the_full_reencode(
    name: str, fallback_sources: dict[str, Path]
) -> None:
    """A mid-GOP cut of each takes the full re-encode with its own precise reason, never a smart cut."""
    _, decision = await probe_and_choose(str(fallback_sources[name]), "auto", 1.5, 3.5)
    assert (decision.path, decision.reason) == ("reencode", FALLBACK_REASONS[name])


async def test_pixel_format_the_head_encoder_lacks_means_reencode(plan_sources: dict[str, Path]) -> None:
    """10-bit HEVC smart-cuts with this libx265 (it takes yuv420p10le); where libx265 is an 8-bit build, or there is
    no libx265 at all, the same layout takes the full re-encode."""
    media = str(plan_sources["hevc_main10_mid_gop"])
    info = await probe(media)
    layout = await cut_layout(media, 1.5, 3.7)
    here = decide_cut("auto", info.streams, layout, fits_mp4=True, encoders=frozenset({"libx265"}),
                      pix_fmts=splice_pix_fmts())
    eight_bit = decide_cut("auto", info.streams, layout, fits_mp4=True, encoders=frozenset({"libx265"}),
                           pix_fmts={"libx265": frozenset({"yuv420p", "yuv422p", "yuv444p"})})
    no_x265 = decide_cut("auto", info.streams, layout, fits_mp4=True, encoders=frozenset({"libx264"}))
    assert (layout.video.pix_fmt, here.path) == ("yuv420p10le", "smart")
    assert (eight_bit.path, eight_bit.reason) == ("reencode", "pix_fmt_not_encodable")
    assert (no_x265.path, no_x265.reason) == ("reencode", "no_matching_encoder")
