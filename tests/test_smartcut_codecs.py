"""Smart cuts of HEVC and VP9 media, cut in-process (no stack) and checked against a decode of the source: the
clip decodes without an error, has the source's frames at the source's times, the copied ones bit-identical,
and keeps the source's profile and pixel format. HEVC clips are tagged `hev1` (their pieces carry different
parameter sets in-band); a stream that cannot be spliced is refused, not cut wrongly."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.media.ffmpeg import MediaError
from shared.media.smartcut import cut_frames
from tests.frames import decode_errors, decoded_frames
from tests.media import FFMPEG_TIMEOUT_SEC, keyframe_times, make_source, probe, stream_of

EPS_SEC = 0.002


@dataclass(frozen=True)
class CodecCase:
    name: str
    start: float
    end: float
    source: dict[str, Any] = field(default_factory=dict)
    suffix: str = ".mp4"


CASES = [
    CodecCase("hevc_bframes", 1.5, 3.7, {"seconds": 5, "codec": "libx265", "bframes": 2}),
    CodecCase("hevc_main10_no_bframes", 1.53, 3.4, {"seconds": 4, "codec": "libx265", "bframes": 0,
                                                    "pix_fmt": "yuv420p10le", "audio": False}),
    CodecCase("vp9_altref_webm", 1.5, 3.5, {"seconds": 4, "codec": "libvpx-vp9", "altref": True}, suffix=".webm"),
]


def _as_staged(path: Path) -> Path:
    """The MP4 the fetcher stages a WebM source in (its tracks then have ids the join can name)."""
    staged = path.with_suffix(".staged.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", str(staged)], check=True,
                   capture_output=True, timeout=FFMPEG_TIMEOUT_SEC)
    return staged


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hevc_and_vp9_smart_cuts_are_frame_exact(case: CodecCase, tmp_path: Path) -> None:
    source = make_source(tmp_path / f"src{case.suffix}", **case.source)
    if case.suffix == ".webm":
        source = _as_staged(source)
    clip = tmp_path / "clip.mp4"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outcome = await cut_frames(str(source), clip, start=case.start, end=case.end,
                               audio=case.source.get("audio", True), scratch=scratch)
    assert outcome.path == "smart"
    assert decode_errors(clip) == ""
    wanted = decoded_frames(source, outcome.first_frame - EPS_SEC, case.end - EPS_SEC)
    got = decoded_frames(clip)
    assert len(got) == len(wanted)
    assert [round(f.pts, 3) for f in got] == [round(f.pts, 3) for f in wanted]
    join = next(k for k in keyframe_times(source) if k >= outcome.first_frame - EPS_SEC)
    copied = [i for i, w in enumerate(wanted) if outcome.first_frame + w.pts >= join - EPS_SEC][:20]
    assert copied and all(got[i].md5 == wanted[i].md5 for i in copied), "copied frames differ from the source's"
    video, original = stream_of(probe(clip), "video"), stream_of(probe(source), "video")
    assert (video["profile"], video["pix_fmt"]) == (original["profile"], original["pix_fmt"])
    assert float(video["duration"]) == pytest.approx(case.end - outcome.first_frame, abs=1 / 30 + EPS_SEC)
    if case.source["codec"] == "libx265":
        assert video["codec_tag_string"] == "hev1"


def _interlaced(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30:duration=4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-flags", "+ildct+ilme", "-x264-params",
                    "tff=1", "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True,
                   timeout=FFMPEG_TIMEOUT_SEC)
    return path


async def test_a_stream_that_cannot_be_spliced_is_refused(tmp_path: Path) -> None:
    """Interlaced video: the trimmer's cut says it needs a re-encode instead of joining progressive frames."""
    source = _interlaced(tmp_path / "interlaced.mp4")
    with pytest.raises(MediaError, match="interlaced"):
        await cut_frames(str(source), tmp_path / "clip.mp4", start=1.5, end=3.5, audio=False, scratch=tmp_path)
