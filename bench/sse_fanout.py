"""Many open event streams on one gateway process: how fast a progress event reaches all of them, and what each
stream costs in memory, side by side with a bare NATS subscriber receiving the same messages.

    python -m bench.sse_fanout [--streams 1000] [--rounds 5]

Starts NATS, S3 and PostgreSQL on loopback and one gateway process (no workers, AUTH=off: the jobs stay
queued), submits one job per stream, opens every stream with one httpx client, then each round publishes one
ProgressEvent per job on core NATS (what workers' heartbeats do) and times, from the publish, the arrival of
that event on every stream. The reference: a plain NATS subscriber to `<prefix>.progress.*` in this process
receiving the same messages. The client reading the streams is Python on the same cores: its own time is in
the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec

from services.stack.devstack import ensure_postgres, free_port, start_nats, start_s3
from services.stack.localstack import init_in_child, spawn_service, wait_healthy
from shared.jobs.contracts import ProgressEvent
from shared.runtime.bus import Subjects, connect
from shared.settings import Settings, load_settings

S3_KEY, S3_SECRET = "bench", "bench-secret-key"
ROOT = Path(__file__).resolve().parent.parent / ".data"
ROUND_TIMEOUT_SEC = 120.0
SETTLE_SEC = 1.0  # pause between rounds
PCT_STEP = 0.01  # round r publishes pct r * PCT_STEP (event id r * 100)


@contextmanager
def gateway_only(folder: Path, streams: int) -> Iterator[tuple[Settings, str, int]]:
    servers = [start_nats(folder / "nats"), start_s3(folder / "s3", S3_KEY, S3_SECRET)]
    child = None
    try:
        servers.append(ensure_postgres(load_settings().database_url, folder / "pg"))
        tag = folder.name[-6:].lower().replace("_", "x")
        settings = load_settings(
            {}, nats_url=servers[0].url, s3_endpoint_url=servers[1].url, s3_access_key=S3_KEY,
            s3_secret_key=S3_SECRET, database_url=servers[2].url, db_schema=f"bench_sse_{tag}",
            s3_bucket=f"bench-sse-{tag}", nats_stream=f"BSSE{tag.upper()}", scratch_dir=str(folder / "scratch"),
            gateway_port=free_port(), log_level="warning", auth="off", sse_max_streams=streams + 10,
            rate_limit_per_min=streams * 10,
        )
        url = f"http://127.0.0.1:{settings.gateway_port}"
        init_in_child(settings)
        child = spawn_service(settings, "gateway", "gateway")
        with httpx.Client() as http:
            wait_healthy(http, url, [child])
        yield settings, url, child.pid
    finally:
        if child is not None:
            child.stop(10.0)
        for server in reversed(servers):
            server.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"n": len(ordered), "median_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[round(0.95 * (len(ordered) - 1))], "max_ms": 1000 * ordered[-1]}


async def until_all(arrived: dict[tuple[str, int], float], job_ids: list[str], event_id: int) -> None:
    """Until every job's stream has sent `event_id` (bounded)."""
    async with asyncio.timeout(ROUND_TIMEOUT_SEC):
        while True:
            if all((j, event_id) in arrived for j in job_ids):
                return
            await asyncio.sleep(0.01)


async def run(streams: int, rounds: int) -> dict[str, object]:
    ROOT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT, prefix="bench-sse-") as work, \
            gateway_only(Path(work), streams) as (settings, url, pid):
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30, read=None)) as http:
            job_ids = []
            for _ in range(streams):
                made = await http.post(f"{url}/api/jobs", json={
                    "source": {"type": "url", "url": "http://127.0.0.1:9/never.mp4"}, "startSec": 1, "endSec": 2})
                assert made.status_code == 202, made.text
                job_ids.append(made.json()["id"])
            rss_before = rss_mib(pid)
            arrived: dict[tuple[str, int], float] = {}

            async def read(job_id: str) -> None:
                async with http.stream("GET", f"{url}/api/jobs/{job_id}/events") as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            arrived[(job_id, int(line[4:]))] = time.perf_counter()

            readers = [asyncio.create_task(read(job_id)) for job_id in job_ids]
            await until_all(arrived, job_ids, 0)
            rss_open = rss_mib(pid)

            nc = await connect(settings, "bench-sse")
            subjects = Subjects(settings.subject_prefix)
            bare: dict[tuple[str, int], float] = {}

            async def keep(msg: object) -> None:
                event = msgspec.json.decode(msg.data, type=ProgressEvent)  # type: ignore[attr-defined]
                bare[(event.job_id, round(event.pct * 10_000))] = time.perf_counter()

            await nc.subscribe(subjects.progress("*"), cb=keep)
            await nc.flush()
            gateway_rounds, bare_rounds = [], []
            for r in range(1, rounds + 1):
                event_id = round(r * PCT_STEP * 10_000)
                began = time.perf_counter()
                for job_id in job_ids:
                    await nc.publish(subjects.progress(job_id), msgspec.json.encode(
                        ProgressEvent(job_id=job_id, pct=r * PCT_STEP, stage="fetch")))
                await nc.flush()
                await until_all(arrived, job_ids, event_id)
                gateway_rounds.append(summary([arrived[(j, event_id)] - began for j in job_ids]))
                bare_rounds.append(summary([bare[(j, event_id)] - began for j in job_ids]))
                await asyncio.sleep(SETTLE_SEC)
            await nc.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    def median_of(series: list[dict[str, float]], name: str) -> float:
        return statistics.median(s[name] for s in series)

    return {
        "streams": streams, "rounds": rounds,
        "gateway_rss_mib": {"before_streams": rss_before, "streams_open": rss_open,
                            "per_stream_kib": 1024 * (rss_open - rss_before) / streams},
        "sse_all_streams_ms": {k: median_of(gateway_rounds, k) for k in ("median_ms", "p95_ms", "max_ms")},
        "bare_nats_subscriber_ms": {k: median_of(bare_rounds, k) for k in ("median_ms", "p95_ms", "max_ms")},
        "rounds_detail": {"sse": gateway_rounds, "bare": bare_rounds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_fanout")
    parser.add_argument("--streams", type=int, default=1000, help="open event streams (one job each)")
    parser.add_argument("--rounds", type=int, default=5, help="progress events per stream (the median is reported)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.streams, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
