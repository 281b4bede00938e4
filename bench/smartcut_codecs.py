"""HEVC and VP9 smart cuts vs the full re-encode they replaced, on the same clip in the same run.

Per codec a 640x360 30 fps source (2 s GOP; HEVC with B-frames, VP9 with alt-ref frames, staged as MP4 as the
fetcher does) and a clip starting between keyframes. Each round, interleaved: `shared.media.smartcut.cut_frames`
in-process (what the trimmer runs, without the stack around it) and the full re-encode a clip of such a source
took before (`ffmpeg -ss A -to B -i SRC -c:v libx264 -preset veryfast -crf 23 -c:a copy`: the encoder stage's
H.264). Wall seconds, medians of `--runs` rounds.

`python -m bench.smartcut_codecs [--runs N] [--source-sec S] [--clip-sec C]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shared.media.smartcut import cut_frames
from tests.media import make_source

REENCODE_ARGS = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-c:a", "copy"]
CLIP_START_SEC = 7.5  # between keyframes (2 s GOP)
SOURCES = {"hevc": {"codec": "libx265", "bframes": 3}, "vp9": {"codec": "libvpx-vp9", "altref": True}}


def _source(work: Path, codec: str, seconds: int) -> Path:
    suffix = ".webm" if codec == "vp9" else ".mp4"
    made = make_source(work / f"{codec}{suffix}", seconds=seconds, size="640x360", gop=60, **SOURCES[codec])
    if suffix == ".mp4":
        return made
    staged = work / f"{codec}.staged.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(made), "-c", "copy", str(staged)], check=True)
    return staged


async def _timed_smart(source: Path, out: Path, scratch: Path, start: float, end: float) -> float:
    scratch.mkdir(exist_ok=True)
    began = time.perf_counter()
    outcome = await cut_frames(str(source), out, start=start, end=end, audio=True, scratch=scratch)
    if outcome.path != "smart":
        raise RuntimeError(f"expected a smart cut, got {outcome.path}")
    return time.perf_counter() - began


def _timed_reencode(source: Path, out: Path, start: float, end: float) -> float:
    began = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{start}", "-to", f"{end}", "-i", str(source),
                    *REENCODE_ARGS, "-movflags", "+faststart", str(out)], check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - began


async def compare(work: Path, codec: str, runs: int, source_sec: int, clip_sec: float) -> dict[str, object]:
    source = _source(work, codec, source_sec)
    start, end = CLIP_START_SEC, CLIP_START_SEC + clip_sec
    smart, full = [], []
    for i in range(runs):
        smart.append(await _timed_smart(source, work / f"smart{i}.mp4", work / f"scratch-{codec}-{i}", start, end))
        full.append(await asyncio.to_thread(_timed_reencode, source, work / f"full{i}.mp4", start, end))
    return {"smart_cut_s": smart, "full_reencode_s": full, "median_smart_s": statistics.median(smart),
            "median_full_s": statistics.median(full),
            "smart_over_full": statistics.median(smart) / statistics.median(full)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.smartcut_codecs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source-sec", type=int, default=40)
    parser.add_argument("--clip-sec", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {codec: asyncio.run(compare(work, codec, args.runs, args.source_sec, args.clip_sec))
                   for codec in SOURCES}
    print(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clip_sec": args.clip_sec,
                      "source": "640x360 30 fps, 2 s GOP", **results}, indent=2))


if __name__ == "__main__":
    main()
