"""`python -m bench.url_sources`: what a URL source costs, by range reads through the guarded proxy vs a whole
download, and the proxy's own overhead (the same range reads straight from ffmpeg/PyAV to the origin).

The fetcher's work for one 30 s clip of a 10-minute file on a local HTTP server: find range support, probe
(moov + the keyframe), stage the range by stream copy. Prints seconds and bytes the origin served per path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from shared.media.cut import copy_cut
from shared.media.probe import probe
from shared.media.testpattern import make_test_pattern
from shared.net.fetch import fetch_to_file, inspect_url
from shared.net.fetchproxy import fetch_session
from shared.settings import load_settings
from tests.http_source import MediaServer

DATA = Path(".data/bench")
SOURCE_SEC = 600
CLIP = (301.3, 331.3)  # the clip MACHINE-NOTES.md measures cuts with
ORIGIN_SNDBUF_BYTES = 128 * 1024  # see tests/test_range_reads.py: loopback buffers are not what a WAN carries


async def _stage(url: str, out: Path, av: dict[str, str] | None, args: list[str]) -> None:
    info = await probe(url, keyframe_at=CLIP[0], options=av)
    start = info.keyframe_before or CLIP[0]
    await copy_cut(url, out, seek_sec=start, duration_sec=CLIP[1] + 1 - start, input_args=args)


async def one_run(path: str, origin: MediaServer, url: str, work: Path) -> tuple[float, int]:
    settings = load_settings({}, fetch_allow_networks="127.0.0.1/32", fetch_timeout_sec=600)
    before, began = origin.bytes_sent, time.perf_counter()
    if path == "direct":
        await _stage(url, work / "direct.mp4", None, [])
    else:
        async with fetch_session(settings) as session:
            if path == "range_proxy":
                remote = await inspect_url(url, session, settings)
                assert remote.ranges
                await _stage(remote.url, work / "range.mp4", session.av_options(), session.ffmpeg_input_args(url))
            else:
                local = work / "download"
                await fetch_to_file(url, local, settings, session)
                await _stage(str(local), work / "whole.mp4", None, [])
                local.unlink()
    return time.perf_counter() - began, origin.bytes_sent - before


async def run(runs: int) -> dict[str, object]:
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / "source-600s-360p.mp4", seconds=SOURCE_SEC, size="640x360",
                               video_bitrate="2M")
    results: dict[str, object] = {"source_bytes": source.stat().st_size, "clip": CLIP}
    with tempfile.TemporaryDirectory(dir=DATA) as work, MediaServer(source.parent) as origin:
        origin.send_buffer_bytes = ORIGIN_SNDBUF_BYTES
        url = origin.url(source.name)
        for path in ("range_proxy", "direct", "whole_download"):
            samples = [await one_run(path, origin, url, Path(work)) for _ in range(runs)]
            results[path] = {
                "median_sec": round(statistics.median(s[0] for s in samples), 3),
                "median_bytes": int(statistics.median(s[1] for s in samples)),
                "share_of_file": round(statistics.median(s[1] for s in samples) / source.stat().st_size, 4),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.url_sources")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.runs)), indent=2))


if __name__ == "__main__":
    main()
