"""H.264 smart cuts from MP4 are made in one in-process PyAV pass (`shared.media.avcut`): no ffmpeg process, the
same clip as the ffmpeg path (frame times, copied frames bit-identical, re-encoded ones close, audio packets and
their times the same), clean decode. Other sources keep the ffmpeg path, visibly: H.264 in Matroska (a container
the pass does not read), and a stream PyAV's encoder refuses before anything is cut."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import av
import pytest

from shared.media import avcut, smartcut
from shared.media.ffmpeg import FfmpegDeadline, RunLimits
from shared.media.keyframes import cut_layout
from shared.media.smartcut import cut_frames, frame_cut
from tests.frames import audio_lag, decode_errors, decoded_frames, psnr_per_frame
from tests.media import FFMPEG_TIMEOUT_SEC, make_source

MIN_PSNR_DB = 35.0
EPS_SEC = 0.002
# (name, make_source arguments, start, end): a head, a copied run and a tail; a tail only; a long head; VFR
CASES = [
    ("bframes", {"seconds": 6}, 2.51, 4.8),
    ("start_on_keyframe_bframes", {"seconds": 6}, 2.0, 4.55),
    ("gop_4s", {"seconds": 8, "gop": 120}, 1.3, 6.6),
    ("variable_frame_rate", {"seconds": 6, "vfr": True}, 2.55, 5.6),
    ("video_only_fps_25", {"seconds": 5, "audio": False, "fps": "25", "gop": 25}, 1.53, 3.7),
]


class FfmpegRuns:
    """Counts the ffmpeg processes the smart cut starts (the real `run_ffmpeg` still runs them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = smartcut.run_ffmpeg

        async def counted(*args: Any, **kwargs: Any) -> None:
            self.count += 1
            await real(*args, **kwargs)

        monkeypatch.setattr(smartcut, "run_ffmpeg", counted)


def _packets(path: Path, kind: str) -> list[tuple[int | None, int | None, str]]:
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == kind]
        return [(p.pts, p.dts, hashlib.md5(bytes(p)).hexdigest()) for p in container.demux(*streams) if p.size]


@pytest.mark.parametrize("name,source_args,start,end", CASES, ids=[c[0] for c in CASES])
async def test_h264_smart_cut_in_process_makes_the_ffmpeg_paths_clip(
    name: str, source_args: dict[str, Any], start: float, end: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / f"{name}.mp4", **source_args)
    layout = await cut_layout(str(source), start, end)
    audio = source_args.get("audio", True)
    runs = FfmpegRuns(monkeypatch)
    ours, theirs = tmp_path / "pyav.mp4", tmp_path / "ffmpeg.mp4"
    outcome = await frame_cut(str(source), ours, layout, audio=audio, scratch=tmp_path, fmt="mov")
    assert runs.count == 0, "the H.264 MP4 cut started an ffmpeg process"
    assert outcome.path == "smart"
    await frame_cut(str(source), theirs, layout, audio=audio, scratch=tmp_path, fmt="mov", in_process=False)
    assert runs.count >= 2  # the reference really took the ffmpeg path: head/tail encodes and the join
    assert decode_errors(ours) == ""
    got, reference = decoded_frames(ours), decoded_frames(theirs)
    wanted = decoded_frames(source, layout.first_frame - EPS_SEC, end - EPS_SEC)
    assert [round(f.pts, 3) for f in got] == [round(f.pts, 3) for f in wanted] == [round(f.pts, 3) for f in reference]
    assert got[0].pts == 0
    # frames from the join keyframe to the copied run's end are the source's, bit for bit
    assert layout.join is not None and layout.copy_end is not None
    copied = [i for i, f in enumerate(wanted) if layout.join - EPS_SEC <= layout.first_frame + f.pts < layout.copy_end
              - EPS_SEC]
    assert copied and all(got[i].md5 == wanted[i].md5 for i in copied)
    differing = [i for i, (g, w) in enumerate(zip(got, wanted, strict=True)) if g.md5 != w.md5]
    psnr = psnr_per_frame(ours, source, layout.first_frame - EPS_SEC, end - EPS_SEC)
    assert len(psnr) == len(got) and all(psnr[i] >= MIN_PSNR_DB for i in differing)
    if audio:  # the same audio packets at the same times, and in sync with the video
        assert _packets(ours, "audio") == _packets(theirs, "audio")
        lag = audio_lag(ours, source, layout.first_frame + _audio_start(ours))
        assert abs(lag) <= 1 / 30
    # the video's decode and presentation times are the ffmpeg path's (the head re-encoded, the rest copied)
    assert [p[:2] for p in _packets(ours, "video")][:-1] == [p[:2] for p in _packets(theirs, "video")][:-1]


def _remux(source: Path, output: Path, *args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), *args, str(output)], check=True,
                   capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)


def _audio_start(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


async def test_h264_in_matroska_keeps_the_ffmpeg_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mp4 = make_source(tmp_path / "src.mp4", seconds=5)
    mkv = tmp_path / "src.mkv"
    _remux(mp4, mkv, "-c", "copy")
    runs = FfmpegRuns(monkeypatch)
    for fmt in ("matroska", ""):  # known from the sniff, or found on opening
        outcome = await cut_frames(str(mkv), tmp_path / f"clip{fmt}.mp4", start=1.5, end=3.7, audio=True,
                                   scratch=tmp_path, fmt=fmt)
        assert outcome.path == "smart"
        assert decode_errors(tmp_path / f"clip{fmt}.mp4") == ""
    assert runs.count >= 4


async def test_audio_the_pass_does_not_copy_is_cut_by_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audio the in-process pass does not copy (here: none of it, the set of codecs it copies emptied) is refused
    before anything is cut, and the clip is made by the ffmpeg path, with that audio, in sync."""
    source = make_source(tmp_path / "src.mp4", seconds=5)
    monkeypatch.setattr(avcut, "IN_PROCESS_AUDIO", frozenset())
    runs = FfmpegRuns(monkeypatch)
    clip = tmp_path / "clip.mp4"
    outcome = await cut_frames(str(source), clip, start=1.5, end=3.7, audio=True, scratch=tmp_path, fmt="mov")
    assert outcome.path == "smart"
    assert runs.count >= 2
    assert decode_errors(clip) == ""
    with av.open(str(clip)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
    assert abs(audio_lag(clip, source, outcome.first_frame + _audio_start(clip))) <= 1 / 30
    assert avcut.in_process_blocker((await cut_layout(str(source), 1.5, 3.7)).video, "matroska") == "container"


async def test_the_pass_keeps_an_ffmpeg_runs_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No process to kill: the pass checks the deadline an ffmpeg run of the same work would have at every packet."""
    source = make_source(tmp_path / "src.mp4", seconds=5)
    monkeypatch.setattr(avcut, "DEFAULT_LIMITS", RunLimits(base_sec=0.0, per_media_sec=0.0))
    with pytest.raises(FfmpegDeadline):
        await cut_frames(str(source), tmp_path / "clip.mp4", start=1.5, end=3.7, audio=True, scratch=tmp_path)


async def test_a_piece_over_the_frame_budget_is_cut_by_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass holds a piece's decoded frames until it encodes them: a piece whose frames would take more than
    the budget (a long GOP, a large frame) is refused before anything is cut and made by the ffmpeg path."""
    source = make_source(tmp_path / "src.mp4", seconds=8, gop=120)
    layout = await cut_layout(str(source), 1.3, 6.6)  # a head of 81 frames of 320x180: ~7 MiB
    monkeypatch.setattr(avcut, "BUFFER_BUDGET_BYTES", 4 * avcut.MIB)
    runs = FfmpegRuns(monkeypatch)
    clip = tmp_path / "clip.mp4"
    outcome = await frame_cut(str(source), clip, layout, audio=True, scratch=tmp_path, fmt="mov")
    assert outcome.path == "smart"
    assert runs.count >= 2
    assert decode_errors(clip) == ""
    wanted = decoded_frames(source, layout.first_frame - EPS_SEC, 6.6 - EPS_SEC)
    assert [round(f.pts, 3) for f in decoded_frames(clip)] == [round(f.pts, 3) for f in wanted]


async def test_audio_ending_before_the_clip_does_not_read_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audio stream ending before the clip: the pass stops reading once the video is read and the demux is
    past endSec (+ `AUDIO_LAG_SEC`), not at the end of the file."""
    video = make_source(tmp_path / "video.mp4", seconds=60, audio=False)
    audio = make_source(tmp_path / "audio.mp4", seconds=2, video=False)
    source = tmp_path / "src.mp4"
    _remux(video, source, "-i", str(audio), "-map", "0:v", "-map", "1:a", "-c", "copy")
    layout = await cut_layout(str(source), 20.5, 25.0)
    checks = 0
    real = avcut._Cut._check

    def counted(self: avcut._Cut) -> None:
        nonlocal checks
        checks += 1  # a packet demuxed, a frame decoded or encoded
        real(self)

    monkeypatch.setattr(avcut._Cut, "_check", counted)
    runs = FfmpegRuns(monkeypatch)
    clip = tmp_path / "clip.mp4"
    outcome = await frame_cut(str(source), clip, layout, audio=True, scratch=tmp_path, fmt="mov")
    assert outcome.path == "smart" and runs.count == 0
    assert decode_errors(clip) == ""
    # 20 s .. 25 s + the lag, at 30 fps, and the head's and tail's frames: far under the 1,200 packets to the end
    assert checks < (25.0 + avcut.AUDIO_LAG_SEC + 1 - 20.0) * 30 * 1.5


async def test_a_cancelled_pass_stops_before_the_cancel_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while it encodes a piece, the pass stops at the next frame (not after encoding them all), and the
    cancel returns once the thread has stopped."""
    source = make_source(tmp_path / "src.mp4", seconds=8, gop=120)
    layout = await cut_layout(str(source), 1.3, 6.6)
    encoding, ended = threading.Event(), threading.Event()
    encoded: list[int] = []
    real_encode, real_run, real_mux = avcut._Cut._encode, avcut._Cut.run, avcut._Cut._mux_encoded

    def encode(self: avcut._Cut, *args: Any) -> None:
        encoding.set()
        self.stop.wait(10)  # cancelled here: the encode starts after the stop, a little later (< STOP_WAIT_SEC)
        time.sleep(0.3)
        real_encode(self, *args)

    def mux_encoded(self: avcut._Cut, *args: Any) -> None:
        encoded.append(1)
        real_mux(self, *args)

    def run(self: avcut._Cut) -> None:
        try:
            real_run(self)
        finally:
            ended.set()

    monkeypatch.setattr(avcut._Cut, "_encode", encode)
    monkeypatch.setattr(avcut._Cut, "_mux_encoded", mux_encoded)
    monkeypatch.setattr(avcut._Cut, "run", run)
    task = asyncio.ensure_future(frame_cut(str(source), tmp_path / "clip.mp4", layout, audio=True, scratch=tmp_path,
                                           fmt="mov"))
    assert await asyncio.to_thread(encoding.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ended.is_set()
    assert encoded == []
