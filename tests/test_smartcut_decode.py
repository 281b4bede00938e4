"""The re-encoded head and tail of a smart cut decode only what they must: from the keyframe their frames
depend on, not from the keyframe before it (a whole extra GOP). Checked with ffmpeg itself on a source with
B-frames: the first frame it decodes after the segment's seek is that keyframe."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from shared.media.keyframes import cut_layout
from shared.media.smartcut import decode_seek
from tests.media import FFMPEG_TIMEOUT_SEC, make_source

FPS = 30
GOP = 30  # a keyframe every second


def _first_decoded(source: Path, seek: float) -> float:
    """Source time of the first frame ffmpeg decodes when seeking the way the segment encode does."""
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-noaccurate_seek", "-ss", f"{seek:.6f}", "-i", str(source), "-map", "0:v:0",
         "-vf", "showinfo", "-frames:v", "1", "-f", "null", "-"],
        capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_SEC, check=True).stderr
    found = re.search(r"pts_time:(-?[0-9.]+)", out)
    assert found, out[-2000:]
    return seek + float(found.group(1))  # showinfo's times are relative to the seek


@pytest.mark.parametrize("start,end", [(2.5, 4.2), (1.1, 3.97), (3.0, 5.5)])
async def test_segments_decode_from_their_own_keyframe(tmp_path: Path, start: float, end: float) -> None:
    source = make_source(tmp_path / "src.mp4", seconds=6, fps=str(FPS), gop=GOP, bframes=2)
    layout = await cut_layout(str(source), start, end)
    frame = 1 / FPS
    for keyframe in {layout.start_keyframe, layout.end_keyframe}:
        assert keyframe > 0  # a keyframe with one before it, so decoding too early would show
        first = _first_decoded(source, decode_seek(keyframe, layout.frame_sec))
        assert abs(first - keyframe) < frame / 2, f"decoding for the keyframe at {keyframe} s starts at {first} s"
