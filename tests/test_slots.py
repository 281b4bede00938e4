"""The worker pulls only when a slot is free: a message waiting behind a long stage spends no delivery, and the
highest priority waiting goes first (real NATS JetStream and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from shared.jobs.contracts import PRIORITIES, ClipJobMessage, Priority, UrlSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH, ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.runtime.worker import StageDeps, StageSpec, run_worker

VISIBILITY_SEC = 1.5  # JetStream ack_wait in this test, s
BUSY_SEC = 2.5  # each message keeps its worker's only slot this long: longer than VISIBILITY_SEC
REPLICAS = 2  # worker loops of the stage, WORKER_CONCURRENCY=1 each
WAIT_SEC = 30.0  # longest the test waits for the workers to handle every message, s
STOP_WITHIN_SEC = 5.0  # a stop with every slot busy ends within the grace (0.5 s) and this margin, s


def job(priority: Priority) -> ClipJobMessage:
    return ClipJobMessage(id=str(uuid7()), source=UrlSource(url="http://127.0.0.1:9/none.mp4"), start_sec=1.0,
                          end_sec=2.0, priority=priority)


@pytest.mark.settings(worker_concurrency=1, queue_visibility_sec=VISIBILITY_SEC, max_attempts=3)
async def test_waiting_messages_spend_no_delivery_and_fast_goes_first(resources: Resources) -> None:
    handled: list[tuple[str, int]] = []  # (job id, delivery number) in the order the stage ran them

    async def slow_stage(task: ClipJobMessage, deps: StageDeps) -> None:
        handled.append((task.id, deps.attempt))
        await asyncio.sleep(BUSY_SEC)  # the runtime's heartbeat keeps this one message alive meanwhile

    spec = StageSpec(ENTRY_STAGE, ClipJobMessage, slow_stage)
    running = [job("bulk") for _ in range(REPLICAS)]
    queued = [job("bulk"), job("bulk"), job("fast")]  # published while every slot is busy, the fast one last
    for message in running:
        await bus.publish_job(resources.js, resources.subjects, message)
    stop = asyncio.Event()
    replicas = [
        asyncio.create_task(run_worker(spec, resources, DEFAULT_ROUTE_LENGTH, stop)) for _ in range(REPLICAS)
    ]
    try:
        async with asyncio.timeout(WAIT_SEC):
            while len(handled) < REPLICAS:  # noqa: ASYNC110 - the handler appends
                await asyncio.sleep(0.05)
            for message in queued:
                await bus.publish_job(resources.js, resources.subjects, message)
            total = len(running) + len(queued)
            while len(handled) < total or await bus.backlog(resources.js, resources.settings):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*replicas), timeout=WAIT_SEC)
    order = [job_id for job_id, _ in handled]
    assert sorted(order) == sorted(m.id for m in running + queued), "a message was run twice (or never)"
    assert order.index(queued[-1].id) < REPLICAS + 2, f"fast did not go before bulk queued earlier: {handled}"
    assert [attempt for _, attempt in handled] == [1] * len(handled), f"a waiting message spent a delivery: {handled}"
    for priority in PRIORITIES:
        consumer = bus.consumer_name(ENTRY_STAGE, priority)
        info = await resources.js.consumer_info(resources.settings.nats_stream, consumer)
        assert info.num_redelivered == 0, (priority, info)


@pytest.mark.settings(worker_concurrency=1, shutdown_grace_sec=0.5)
async def test_a_stop_does_not_wait_for_a_busy_slot(resources: Resources) -> None:
    """Every slot busy with long work: the worker still stops within SHUTDOWN_GRACE_SEC (the work is handed back)."""
    started = asyncio.Event()

    async def endless_stage(task: ClipJobMessage, deps: StageDeps) -> None:
        started.set()
        await asyncio.sleep(3600)

    spec = StageSpec(ENTRY_STAGE, ClipJobMessage, endless_stage)
    await bus.publish_job(resources.js, resources.subjects, job("normal"))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(spec, resources, DEFAULT_ROUTE_LENGTH, stop))
    async with asyncio.timeout(WAIT_SEC):
        await started.wait()
    await asyncio.sleep(0.3)  # the loop is back at "take a slot" with the only slot busy
    stop.set()
    await asyncio.wait_for(worker, timeout=STOP_WITHIN_SEC)
