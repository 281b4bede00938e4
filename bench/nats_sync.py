"""JetStream publish rate with `sync_interval: always` (clipjet's embedded server) against the server's default.

    python -m bench.nats_sync [--messages 2000] [--in-flight 1 32] [--replicas 3]

Starts a private nats-server per setting in a temporary folder on the working tree's disk, makes a file-stored
work-queue stream like clipjet's, and publishes `--messages` job-sized messages, each awaited (`--in-flight 1`,
what one worker does) or with several in flight (what many gateway requests do). Prints messages per second.
`--replicas 3`: the same on a three-node cluster on loopback (services.stack.devstack.NatsCluster), the stream with
three
replicas (a publish is acknowledged once a quorum stored it).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from services.stack.devstack import NatsCluster, start_nats
from services.stack.devstack.nats_server import JETSTREAM_SYNC_INTERVAL

SERVER_DEFAULT = "2m"  # nats-server's own sync_interval
PAYLOAD = b'{"id":"0190c1b2-0000-7000-8000-000000000000","source":{"type":"url","url":"https://example.com/v.mp4"},' \
          b'"startSec":12.5,"endSec":42.0,"priority":"normal"}'
ROOT = Path(__file__).resolve().parent.parent / ".data"


async def rate(url: str, messages: int, in_flight: int, replicas: int = 1) -> float:
    nc = await nats.connect(servers=url.split(","))
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], retention=RetentionPolicy.WORK_QUEUE,
                                         storage=StorageType.FILE, num_replicas=replicas))
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                await js.publish("bench.fetch.normal", PAYLOAD, headers={"Nats-Msg-Id": f"m{i}"})

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(messages)))
        return messages / (time.perf_counter() - started)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--replicas", type=int, default=1, help="nodes of a loopback cluster and stream replicas")
    args = parser.parse_args()
    ROOT.mkdir(exist_ok=True)
    for setting in (JETSTREAM_SYNC_INTERVAL, SERVER_DEFAULT):
        for in_flight in args.in_flight:
            with tempfile.TemporaryDirectory(dir=ROOT) as folder:
                server = start_nats(Path(folder), sync_interval=setting) if args.replicas == 1 else \
                    NatsCluster(Path(folder), args.replicas, sync_interval=setting)
                try:
                    per_sec = asyncio.run(rate(server.url, args.messages, in_flight, args.replicas))
                finally:
                    server.stop()
            print(f"replicas={args.replicas} sync_interval={setting:7} in_flight={in_flight:3} {per_sec:8.0f} msg/s")


if __name__ == "__main__":
    main()
