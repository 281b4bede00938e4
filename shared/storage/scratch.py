"""The scratch quota of one scratch volume (NVME_SCRATCH_GB GiB under SCRATCH_DIR), shared by every worker
process that mounts it, and its reports.

The quota guards the volume, not the node: in Kubernetes each worker pod has its own `emptyDir` (whose
`sizeLimit` is set a little above the quota, in the same GiB), so the quota refuses work before the kubelet
would evict the pod. A ledger file in the volume (`.quota.json`, changed under an exclusive `flock` on
`.quota.lock`) holds each reservation with its holder: a file under `.holders/` that the reserving process keeps
locked (`flock`) while it lives. A holder whose lock can be taken is dead (killed, crashed, in any PID
namespace: no process ids are compared), and its reservations are dropped, so a crash frees its space.
A stage that uses scratch waits for room for one message (SCRATCH_RESERVE_MB) before it pulls the next one,
reserves it when the message arrives, and releases it when the message is done.

Workers publish the node's use on `<prefix>.scratch.<node>` (core NATS, every SCRATCH_REPORT_SEC and whenever
they start or stop waiting); the gateway's `ScratchGauge` keeps the latest report of each node and refuses new
jobs (503 `scratch_full`) while every node that reported recently is waiting for room.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import socket
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from shared.errors import ScratchFull
from shared.runtime.bus import Subjects
from shared.runtime.logs import get_logger
from shared.runtime.metrics import record_scratch
from shared.settings import Settings

log = get_logger("scratch")
MIB = 1024 * 1024
WAIT_POLL_SEC = 0.2  # how often a waiting stage looks at the ledger again (other processes release too), s
REPORT_FRESH_PERIODS = 3  # a node's report counts for this many report periods
LEDGER = ".quota.json"
LOCK = ".quota.lock"
HOLDERS = ".holders"  # one locked file per live process that holds reservations in this volume
NEW_HOLDER = ".new-"  # a holder file's name prefix until it is locked


class ScratchReport(msgspec.Struct, rename="camel"):
    """One node's scratch use, as workers publish it."""

    node: str
    used_bytes: int
    quota_bytes: int
    waiting: bool  # a stage on this node is waiting for room before it pulls


def node_name(settings: Settings) -> str:
    """The node a ledger belongs to: the host and its scratch folder."""
    return f"{socket.gethostname()}:{settings.scratch_dir}".replace(".", "_").replace("/", "_").replace(" ", "_")


class _Holder:
    """This process's holder file in one volume, locked for the process's life (the kernel drops the lock when
    the process ends, however it ends)."""

    def __init__(self, root: Path) -> None:
        folder = root / HOLDERS
        folder.mkdir(parents=True, exist_ok=True)
        _drop_dead_holders(folder)
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}"
        creating = folder / f"{NEW_HOLDER}{self.name}"  # locked before it gets its name: never seen unlocked
        self._file = creating.open("a+")
        fcntl.flock(self._file, fcntl.LOCK_EX)  # closed with the process
        creating.rename(folder / self.name)


_holders: dict[Path, _Holder] = {}  # this process's holder per volume


def _holder_of(root: Path) -> str:
    """This process's holder name in the volume at `root` (a new one if the folder was emptied meanwhile)."""
    key = root.resolve()
    if key not in _holders or not (root / HOLDERS / _holders[key].name).exists():
        _holders[key] = _Holder(root)
    return _holders[key].name


def _held(folder: Path, name: str) -> bool:
    """True while the process behind holder `name` lives (its lock cannot be taken); a dead one's file goes."""
    if name in {h.name for h in _holders.values()}:
        return True
    path = folder / name
    try:
        with path.open("a+") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)  # still under our lock: nobody holds it
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _drop_dead_holders(folder: Path) -> None:
    for entry in folder.iterdir():
        if not entry.name.startswith(NEW_HOLDER):
            _held(folder, entry.name)


class ScratchQuota:
    """Reservations against one scratch volume's quota, in a ledger in that volume shared by its processes."""

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.scratch_dir)
        self.quota = settings.scratch_bytes
        self.per_message = min(int(settings.scratch_reserve_mb * MIB), self.quota)
        self.waiting = False

    def _locked(self, change: dict[str, int] | None, drop: str | None, cap: int | None = None) -> int:
        """Under the lock: drop dead reservations, apply a change (unless it would pass `cap`: then -1 and
        nothing changes), write back; the bytes reserved after."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK).open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / LEDGER
            try:
                entries: dict[str, list[str | int]] = json.loads(path.read_text() or "{}")
            except (FileNotFoundError, ValueError):
                entries = {}
            holders = self.root / HOLDERS
            live = {str(v[0]) for v in entries.values() if isinstance(v[0], str) and _held(holders, v[0])}
            entries = {k: v for k, v in entries.items() if v[0] in live}
            if drop is not None:
                entries.pop(drop, None)
            if cap is not None and change and _total(entries) + sum(change.values()) > cap:
                return -1
            if change:
                holder = _holder_of(self.root)
                entries.update({k: [holder, n] for k, n in change.items()})
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries))
            tmp.replace(path)
            return _total(entries)

    def used(self) -> int:
        return self._locked(None, None)

    def has_room(self) -> bool:
        return self.used() + self.per_message <= self.quota

    def reserve(self, nbytes: int) -> str:
        """Record a reservation (the caller waited for room first; racing processes may overshoot a little)."""
        ticket = secrets.token_hex(8)
        self._locked({ticket: nbytes}, None)
        return ticket

    def release(self, ticket: str) -> None:
        self._locked(None, ticket)

    def try_reserve(self, nbytes: int) -> str | None:
        """Reserve `nbytes` if they fit in the quota now (checked and recorded under one lock)."""
        ticket = secrets.token_hex(8)
        return ticket if self._locked({ticket: nbytes}, None, cap=self.quota) >= 0 else None

    async def reserve_when_room(self, nbytes: int) -> str:
        """Wait until `nbytes` more fit in the quota and reserve them (a whole download of a known size)."""
        while True:
            ticket = await asyncio.to_thread(self.try_reserve, nbytes)
            if ticket is not None:
                return ticket
            await asyncio.sleep(WAIT_POLL_SEC)  # other processes release too: the ledger is looked at again

    async def wait_for_room(self, on_change: asyncio.Event | None = None) -> None:
        """Return once one message's reservation fits; `waiting` is True meanwhile."""
        while not await asyncio.to_thread(self.has_room):
            if not self.waiting:
                self.waiting = True
                log.warning("scratch_full", quota_bytes=self.quota, per_message=self.per_message)
                if on_change is not None:
                    on_change.set()
            await asyncio.sleep(WAIT_POLL_SEC)
        if self.waiting:
            self.waiting = False
            log.info("scratch_room_again")
            if on_change is not None:
                on_change.set()


def _total(entries: dict[str, list[str | int]]) -> int:
    return sum(int(v[1]) for v in entries.values())


async def report_loop(
    nc: NatsClient, settings: Settings, quota: ScratchQuota, changed: asyncio.Event, stopping: asyncio.Event
) -> None:
    """Publish the node's use every SCRATCH_REPORT_SEC and at once when a stage starts or stops waiting, until
    `stopping` is set. (It waits with `asyncio.wait`, not `wait_for`: on Python 3.11 a `wait_for` whose event fires
    as the task is cancelled swallows the cancel, and a worker's stop then waited on this loop forever.)"""
    subject = Subjects(settings.subject_prefix).scratch(node_name(settings))
    while not stopping.is_set():
        used = await asyncio.to_thread(quota.used)
        record_scratch(used, quota.quota)
        report = ScratchReport(node_name(settings), used, quota.quota, quota.waiting)
        with suppress(Exception):
            await nc.publish(subject, msgspec.json.encode(report))
        changed.clear()
        waiters = {asyncio.create_task(changed.wait()), asyncio.create_task(stopping.wait())}
        try:
            await asyncio.wait(waiters, timeout=settings.scratch_report_sec, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


REPORTER_STOP_SEC = 5.0  # longest a worker's stop waits for its scratch reporter, s


class ScratchGate:
    """The worker's hook: wait for room before each pull, hold a reservation while a message is handled."""

    def __init__(self, nc: NatsClient, settings: Settings) -> None:
        self.quota = ScratchQuota(settings)
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reporter = asyncio.create_task(report_loop(nc, settings, self.quota, self._changed, self._stopping))

    async def before_pull(self, stopping: asyncio.Future[object]) -> bool:
        """Wait for room for one message; False when the worker is stopping instead."""
        waiter = asyncio.create_task(self.quota.wait_for_room(self._changed))
        await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            return False
        return True

    def take(self) -> str:
        ticket = self.quota.reserve(self.quota.per_message)
        self._changed.set()
        return ticket

    def give_back(self, ticket: str) -> None:
        self.quota.release(ticket)
        self._changed.set()

    async def close(self) -> None:
        self._stopping.set()
        self._reporter.cancel()
        await asyncio.wait({self._reporter}, timeout=REPORTER_STOP_SEC)


@dataclass
class _Seen:
    report: ScratchReport
    at: float


class ScratchGauge:
    """The gateway's view of every node's scratch: the latest fresh report of each."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._nodes: dict[str, _Seen] = {}
        self._decoder = msgspec.json.Decoder(ScratchReport)

    async def start(self, nc: NatsClient) -> None:
        await nc.subscribe(Subjects(self._settings.subject_prefix).scratch(), cb=self._on_report)

    async def _on_report(self, msg: Msg) -> None:
        with suppress(msgspec.DecodeError):
            report = self._decoder.decode(msg.data)
            self._nodes[report.node] = _Seen(report, time.monotonic())

    def saturated(self) -> bool:
        """True when nodes reported recently and every one of them is waiting for scratch space."""
        fresh_after = time.monotonic() - REPORT_FRESH_PERIODS * self._settings.scratch_report_sec
        fresh = [s.report for s in self._nodes.values() if s.at >= fresh_after]
        return bool(fresh) and all(r.waiting for r in fresh)

    def refuse_if_saturated(self) -> None:
        if self.saturated():
            retry = max(1, round(self._settings.scratch_report_sec * REPORT_FRESH_PERIODS))
            raise ScratchFull(
                f"the workers are out of scratch space; try again in {retry} s", retry_after_sec=retry,
            )
