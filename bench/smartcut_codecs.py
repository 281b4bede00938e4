"""HEVC and VP9 smart cuts vs the full re-encode they replaced, on the same clip in the same run.

Per codec a 640x360 30 fps source with pink-noise audio (2 s GOP; HEVC with B-frames, VP9 with alt-ref frames,
staged as MP4 as the fetcher does; made once into .data/bench) and a clip starting between keyframes. Each
round, interleaved: `shared.media.smartcut.cut_frames` in-process (what the trimmer runs, without the stack
around it) and the full re-encode a clip of such a source took before (`ffmpeg -ss A -to B -i SRC -c:v libx264
-preset veryfast -crf 23 -c:a copy`: the encoder stage's H.264). Wall seconds, medians of `--runs` rounds.

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

REENCODE_ARGS = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-c:a", "copy"]
CLIP_START_SEC = 7.5  # between keyframes (2 s GOP)
CODECS = ("hevc", "vp9")
SOURCE_TIMEOUT_SEC = 900  # making a VP9 source with alt-ref frames on a loaded machine


def _source(data: Path, codec: str, seconds: int) -> Path:
    """The codec's source (made once, kept in .data/bench), as the trimmer reads it (VP9: staged as MP4)."""
    suffix = ".webm" if codec == "vp9" else ".mp4"
    made = data / f"{codec}-{seconds}s-360p{suffix}"
    if not made.exists():
        video = (["-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
                  "keyint=60:min-keyint=60:scenecut=0:bframes=3:open-gop=0:log-level=error"] if codec == "hevc" else
                 ["-c:v", "libvpx-vp9", "-deadline", "good", "-cpu-used", "8", "-auto-alt-ref", "1",
                  "-lag-in-frames", "16", "-g", "60", "-b:v", "800k", "-row-mt", "1"])
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=30:duration="
                        f"{seconds}", "-f", "lavfi", "-i", f"anoisesrc=d={seconds}:c=pink:r=48000:seed=7:a=0.5",
                        *video, "-c:a", "libopus" if codec == "vp9" else "aac", "-b:a", "96k", "-shortest",
                        str(made)], check=True, timeout=SOURCE_TIMEOUT_SEC)
    if suffix == ".mp4":
        return made
    staged = made.with_suffix(".staged.mp4")
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


async def compare(
    data: Path, work: Path, codec: str, runs: int, source_sec: int, clip_sec: float
) -> dict[str, object]:
    source = _source(data, codec, source_sec)
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
    parser.add_argument("--source-sec", type=int, default=30)
    parser.add_argument("--clip-sec", type=float, default=15.0)
    args = parser.parse_args()
    data = Path(".data/bench")
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data) as tmp:
        work = Path(tmp)
        results = {codec: asyncio.run(compare(data, work, codec, args.runs, args.source_sec, args.clip_sec))
                   for codec in CODECS}
    print(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clip_sec": args.clip_sec,
                      "source": "640x360 30 fps, 2 s GOP", **results}, indent=2))


if __name__ == "__main__":
    main()
