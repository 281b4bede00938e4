"""A worker hands the C heap's free pages back after each message (real NATS JetStream and PostgreSQL): a stage
whose native work in a worker thread frees most of what it allocated leaves the process's RSS where it was,
not tens of MB higher (the fetcher's RSS climbed that way through a soak, BENCHMARKS.md "Memory")."""

from __future__ import annotations

import asyncio
import os

import pytest

from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH, ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps, StageSpec, run_worker

CHUNK_BYTES = 1024  # one allocation of the stage's thread
HEAP_MB = 96  # what the stage allocates in its thread, MB
KEPT_EVERY = 64  # one chunk in this many stays alive (pins its arena: no free from the top)
KEPT_MB_MARGIN = 24  # RSS may stay this much above where it was (the kept chunks, Python's own pools), MB
WAIT_SEC = 30.0  # longest the test waits for the worker, s
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / 2**20


def fragment(kept: list[bytearray]) -> None:
    """Allocate HEAP_MB in small chunks in this (executor) thread's arena, keep one in KEPT_EVERY, free the rest."""
    made = [bytearray(CHUNK_BYTES) for _ in range(HEAP_MB * 2**20 // CHUNK_BYTES)]
    kept.extend(made[::KEPT_EVERY])
    del made


@pytest.mark.settings(worker_concurrency=1)
async def test_rss_comes_back_after_a_message_that_freed_native_memory(resources: Resources) -> None:
    kept: list[bytearray] = []
    handled = asyncio.Event()

    async def native_stage(task: ClipJobMessage, deps: StageDeps) -> None:
        await asyncio.to_thread(fragment, kept)
        handled.set()

    await asyncio.to_thread(lambda: None)  # the executor's thread exists before the baseline is read
    before = rss_mb()
    spec = StageSpec(ENTRY_STAGE, ClipJobMessage, native_stage)
    message = ClipJobMessage(id=str(uuid7()), source=UrlSource(url="http://127.0.0.1:9/none.mp4"), start_sec=1.0,
                             end_sec=2.0)
    await bus.publish_job(resources.js, resources.subjects, message)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(spec, resources, DEFAULT_ROUTE_LENGTH, stop))
    try:
        async with asyncio.timeout(WAIT_SEC):
            await handled.wait()
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=WAIT_SEC)  # the message's end (and the trim) is behind it
    grown = rss_mb() - before
    assert kept, "the stage ran"
    assert grown < KEPT_MB_MARGIN, f"RSS stayed {grown:.1f} MB above where it was after a {HEAP_MB} MB stage"
