"""Queue depth for Prometheus: every stage consumer's pending and ack-pending counts, read by the reaper every
QUEUE_DEPTH_INTERVAL_SEC (one consumer lookup per stage and priority, all at once; cheap for JetStream)."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from shared.jobs.contracts import PRIORITIES
from shared.jobs.pipeline import installed_stages
from shared.runtime import bus
from shared.runtime.logs import get_logger
from shared.runtime.metrics import QUEUE_MESSAGES
from shared.runtime.resources import Resources

log = get_logger("reaper.queue_depth")


async def read_queue_depth(res: Resources) -> None:
    """Set `clipjet_queue_messages` from every installed stage's consumers."""
    pairs = [(stage, priority) for stage in installed_stages(res.settings.installed_stages) for priority in PRIORITIES]
    infos = await asyncio.gather(*(
        res.js.consumer_info(res.settings.nats_stream, bus.consumer_name(stage, priority)) for stage, priority in pairs
    ), return_exceptions=True)
    for (stage, priority), info in zip(pairs, infos, strict=True):
        if isinstance(info, BaseException):  # not created yet (no worker of the stage started): nothing to show
            continue
        QUEUE_MESSAGES.labels(stage, priority, "pending").set(info.num_pending)
        QUEUE_MESSAGES.labels(stage, priority, "ack_pending").set(info.num_ack_pending)


async def queue_depth_loop(res: Resources, stop: asyncio.Event) -> None:
    """Read the queue depth until `stop` is set; a failed read is logged and tried again next interval."""
    while not stop.is_set():
        try:
            await read_queue_depth(res)
        except Exception as exc:  # NATS away: the gauges keep their last reading
            log.warning("queue_depth_failed", error=repr(exc))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=res.settings.queue_depth_interval_sec)
