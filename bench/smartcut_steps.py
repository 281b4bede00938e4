"""Where a smart cut's time goes, step by step, on a local copy of the benchmark source (no stack, no S3).

Each step of the smart-cut path is timed alone, wall and CPU (this process plus its ffmpeg children), next
to the one step of the stream-copy path it is compared with (`copy_cut` from the keyframe before):

- `probe`: the fetcher's probe (PyAV) without the frame layout (what a keyframe-precision job reads);
- `probe+layout`: the same with the layout of the cut (what a frame-accurate job reads; the fetcher reuses it);
- `layout again`: a second layout read in a fresh opening (what a cutting stage that is not the fetcher reads);
- `head encode`: the re-encoded frames before the first keyframe in the clip (`encode_segment`);
- `head encode + join (frame_cut, ffmpeg)`: the ffmpeg path: head (and tail) encodes, then the one ffmpeg pass
  joining them with the copied run and muxing the audio (`frame_cut(in_process=False)`);
- `smart cut in one PyAV pass (frame_cut)`: the same cut in-process (`shared.media.avcut`), what H.264 MP4/MOV
  sources take now;
- `copy cut`: the stream copy a keyframe-precision job makes of the same range.

`python -m bench.smartcut_steps [--runs N] [--source-sec S]`: medians over the first N ranges of bench/smartcut.py
(30 s clips starting between keyframes).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.copy_path import clip_range
from shared.media.keyframes import CutLayout

FIRST_CLIP = 1000  # the same ranges as bench/smartcut.py


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _timed(step: Callable[[], Awaitable[object]]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), _cpu()
    value = await step()
    return time.perf_counter() - wall, _cpu() - cpu, value


async def steps(source: Path, source_sec: float, runs: int, work: Path) -> dict[str, dict[str, float]]:

    times: dict[str, list[tuple[float, float]]] = {}
    for i in range(runs):
        for name, pair in (await _one_clip(source, *clip_range(FIRST_CLIP + i, source_sec), work / str(i))).items():
            times.setdefault(name, []).append(pair)
    return {name: {"wall_s": round(statistics.median(w for w, _ in pairs), 3),
                   "cpu_s": round(statistics.median(c for _, c in pairs), 3)} for name, pairs in times.items()}


async def _one_clip(source: Path, start: float, end: float, work: Path) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each step for the clip [start, end) of `source`; files written under `work`."""
    from shared.media.cut import copy_cut
    from shared.media.cutplan import probe_and_choose
    from shared.media.keyframes import cut_layout
    from shared.media.smartcut import encode_segment, frame_cut

    media, fmt = str(source), "mov"
    work.mkdir()
    out: dict[str, tuple[float, float]] = {}
    wall, cpu, _ = await _timed(lambda: probe_and_choose(media, "keyframe", start, end))
    out["probe (keyframe job)"] = (wall, cpu)
    wall, cpu, _ = await _timed(lambda: probe_and_choose(media, "auto", start, end))
    out["probe+layout (frame job)"] = (wall, cpu)
    wall, cpu, layout = await _timed(lambda: cut_layout(media, start, end, fmt=fmt))
    out["layout again"] = (wall, cpu)
    assert isinstance(layout, CutLayout) and layout.join is not None
    join = layout.join
    wall, cpu, _ = await _timed(lambda: encode_segment(
        media, work / "head.mp4", layout.video, decode_from=layout.start_keyframe, start=layout.first_frame,
        end=join, frame_sec=layout.frame_sec, fmt=fmt))
    out["head encode"] = (wall, cpu)
    wall, cpu, _ = await _timed(lambda: frame_cut(media, work / "clip.mp4", layout, audio=True, scratch=work,
                                                  fmt=fmt, in_process=False))
    out["head encode + join (frame_cut, ffmpeg)"] = (wall, cpu)
    wall, cpu, _ = await _timed(lambda: frame_cut(media, work / "clip-pyav.mp4", layout, audio=True, scratch=work,
                                                  fmt=fmt))
    out["smart cut in one PyAV pass (frame_cut)"] = (wall, cpu)
    key = layout.start_keyframe
    wall, cpu, _ = await _timed(lambda: copy_cut(media, work / "copy.mp4", seek_sec=key, duration_sec=end - key,
                                                 fmt=fmt))
    out["copy cut (keyframe job)"] = (wall, cpu)
    return out


def main() -> None:
    import argparse
    import json

    from shared.media.testpattern import make_test_pattern

    parser = argparse.ArgumentParser(prog="python -m bench.smartcut_steps")
    parser.add_argument("--runs", type=int, default=5, help="clips (the median is reported)")
    parser.add_argument("--source-sec", type=int, default=120, help="length of the 720p test source, s")
    args = parser.parse_args()
    data = Path(".data/bench")
    source = make_test_pattern(data / f"source-{args.source_sec}s-720p.mp4", seconds=args.source_sec,
                               size="1280x720", fps=30, gop_frames=60, video_bitrate="2M")
    with tempfile.TemporaryDirectory(dir=data) as work:
        result = asyncio.run(steps(source, args.source_sec, args.runs, Path(work)))
    print(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "load": os.getloadavg()[0], "source_sec": args.source_sec, "steps": result}, indent=2))


if __name__ == "__main__":
    main()
