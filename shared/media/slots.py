"""Encode slots shared by every worker process on a node: at most N encodes at once, N lock files.

A slot is an exclusive `flock` on `<scratch>/encode-slots/slot-<i>.lock`. The kernel releases it when the
holder's file is closed, also when the process dies, so a killed worker never leaks a slot. Processes that
share the scratch folder (one node) share the slots.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from shared.runtime.cpus import available_cpus
from shared.runtime.logs import get_logger

log = get_logger("slots")
SLOT_DIR = "encode-slots"
SLOT_POLL_SEC = 0.1  # pause between two rounds of trying every slot while all are taken


def threads_per_encode(max_parallel: int, cores: int | None = None) -> int:
    """This encode's share of the CPUs this process may use (its cgroup limit, shared/runtime/cpus.py) when
    `max_parallel`
    encodes run at once (at least 1)."""
    available = cores if cores is not None else available_cpus()
    return max(1, available // max(1, max_parallel))


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _acquire(paths: list[Path]) -> tuple[int, int] | None:
    """(slot index, locked fd) of the first free slot, or None when all are taken."""
    for index, path in enumerate(paths):
        fd = _try_lock(path)
        if fd is not None:
            return index, fd
    return None


@asynccontextmanager
async def encode_slot(scratch_dir: Path, count: int) -> AsyncIterator[int]:
    """Hold one of `count` node-wide encode slots for the block; waits (polling) while all are taken."""
    folder = scratch_dir / SLOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"slot-{i}.lock" for i in range(max(1, count))]
    held = _acquire(paths)
    if held is None:
        log.info("encode_slot_wait", slots=len(paths))
    while held is None:
        await asyncio.sleep(SLOT_POLL_SEC)
        held = _acquire(paths)
    index, fd = held
    try:
        yield index
    finally:
        with suppress(OSError):
            os.close(fd)
