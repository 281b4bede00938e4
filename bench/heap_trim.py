"""What the worker's trim after each message costs and gives back, on the fetcher's own in-process work.

`python -m bench.heap_trim [--messages 200]`. One process runs "messages" as the fetcher does in its executor
threads, two at a time: a probe with the keyframe before the start and the cut layout (PyAV) of an 8 s range of
the soak's source (60 s 640x360 H.264 + AAC, bench/soak.py), read from a local file. Two rounds, one after
the other in the same process: without the trim, then with `shared.runtime.heap.trim_free_heap()` after each
message. Recorded: RSS after each block (its growth across the round), the time of each trim call (median,
p95), and the CPU time per message of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from bench.soak import speech_source
from shared.media.keyframes import cut_layout
from shared.media.probe import probe
from shared.runtime.heap import trim_free_heap

BLOCK = 20  # messages between two RSS readings
IN_FLIGHT = 2  # messages at once (the fetcher's WORKER_CONCURRENCY)
CLIP_SEC = 8.0
FIRST_START_SEC = 1.005
START_STEP_SEC = 0.37  # each message another range
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


async def message(source: str, i: int) -> None:
    start = FIRST_START_SEC + (i * START_STEP_SEC) % 40.0
    await probe(source, keyframe_at=start)
    await cut_layout(source, start, start + CLIP_SEC)


async def round_of(source: str, messages: int, trim: bool) -> dict[str, Any]:
    trims: list[float] = []
    rss: list[float] = []
    cpu = time.process_time()
    for block in range(0, messages, BLOCK):
        for first in range(block, block + BLOCK, IN_FLIGHT):
            await asyncio.gather(*(message(source, i) for i in range(first, first + IN_FLIGHT)))
            if trim:
                for _ in range(IN_FLIGHT):  # the worker trims at the end of each message
                    began = time.perf_counter()
                    trim_free_heap()
                    trims.append(time.perf_counter() - began)
        rss.append(round(rss_mb(), 1))
    out: dict[str, Any] = {"rss_mb_per_block": rss, "growth_mb": round(rss[-1] - rss[0], 1),
                           "cpu_ms_per_message": round((time.process_time() - cpu) / messages * 1000, 2)}
    if trims:
        out["trim_ms_median"] = round(statistics.median(trims) * 1000, 3)
        out["trim_ms_p95"] = round(statistics.quantiles(trims, n=20)[-1] * 1000, 3)
    return out


async def main_async(messages: int) -> dict[str, Any]:
    source = str(speech_source())
    await message(source, 0)  # PyAV imported, executor threads up
    return {"messages": messages, "without_trim": await round_of(source, messages, False),
            "with_trim": await round_of(source, messages, True)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heap_trim", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per round")
    args = parser.parse_args()
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg(),
               **asyncio.run(main_async(args.messages))}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
