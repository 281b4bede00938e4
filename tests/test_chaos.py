"""Chaos on the real servers: during a load of 30 jobs, workers are SIGKILLed mid-job, NATS and PostgreSQL restart,
a three-node NATS cluster loses its stream leader.

Faults go only to servers this module starts (its own NATS or NATS cluster per test, its own PostgreSQL cluster
for the PostgreSQL restart); workers and the reaper run as separate processes, the gateway in the test's process.
Each scenario must end with every job done once, with the same bytes as a fault-free run: see tests/chaos.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.init import run_init
from services.registry import STAGES
from services.stack.devstack import NatsCluster, RunningServer, start_nats, start_nats_cluster, start_postgres
from shared.runtime.resources import Resources, open_resources
from shared.settings import Settings
from tests.chaos import (
    CHAOS_TIMING,
    LOAD_DEADLINE_SEC,
    POLL_SEC,
    Fleet,
    JobSpec,
    JobWatch,
    Outcome,
    assert_flawless,
    holding,
    judge,
    load_specs,
    outcome_of,
    submit,
)
from tests.conftest import Servers, _drop_everything, authorize, make_settings
from tests.http_source import MediaServer
from tests.s3_fault_proxy import FaultProxy, Request

pytestmark = pytest.mark.chaos
FAULT_AFTER_ENDED = 4  # a restart comes once this many jobs ended: mid-load, with work in every stage
LOST_CHECK_SEC = 10.0  # STUCK_AFTER_SEC of the NATS SIGKILL scenario: silent jobs' messages are checked after this, s
STOP_WAIT_SEC = 15.0  # longest wait for a SIGKILLed server to be gone, s


@pytest.fixture(scope="module")
async def baseline(servers: Servers, sample_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The load run once on the same kind of stack without faults: the bytes (and delays) scenarios compare to."""
    folder = tmp_path_factory.mktemp("chaos-baseline")
    async with chaos_stack(servers, folder, sample_video) as stack:
        ids = await submit(stack.client, load_specs(), stack.source_url, "baseline")
        rows = await JobWatch(stack.settings, ids).wait_all_ended()
        outcome = await outcome_of(rows, ids, stack.res.storage)
    assert len(outcome.sha256) == len(ids), "the fault-free run did not finish every job"
    return outcome


@dataclass
class Stack:
    """One scenario's servers and processes."""

    settings: Settings
    res: Resources
    client: AsyncTestClient[Any]
    fleet: Fleet
    nats: RunningServer | None  # None: the test holds a NatsCluster
    folder: Path
    source_url: str

    def restart_nats(self) -> None:
        """Stop the NATS server (SIGTERM) and start it again on the same port and data folder."""
        assert self.nats is not None
        self.nats.stop()
        port = urlsplit(self.nats.url).port
        self.nats = start_nats(self.folder / "nats", port)


    def kill_nats(self) -> None:
        """SIGKILL the NATS server (nothing flushed on the way out) and start it again on the same port and folder."""
        assert self.nats.process is not None
        self.nats.process.kill()
        self.nats.process.wait(timeout=STOP_WAIT_SEC)
        port = urlsplit(self.nats.url).port
        self.nats = start_nats(self.folder / "nats", port)


@asynccontextmanager
async def chaos_stack(
    servers: Servers, folder: Path, video: Path, **overrides: Any
) -> AsyncIterator[Stack]:
    """A private NATS, the fleet of worker processes and the reaper, the gateway in-process."""
    nats = start_nats(folder / "nats")
    settings = make_settings(servers, folder, **{**CHAOS_TIMING, "nats_url": nats.url, **overrides})
    stack: Stack | None = None
    try:
        async with serving(settings, Fleet(settings, folder), nats, video) as stack:
            yield stack
    finally:
        (stack.nats if stack and stack.nats else nats).stop()


@asynccontextmanager
async def serving(settings: Settings, fleet: Fleet, nats: RunningServer | None, video: Path) -> AsyncIterator[Stack]:
    """`fleet` started (every stage and the reaper), the gateway in-process, the sample served by HTTP; at the
    end the fleet stopped and the test's stream, bucket and schema dropped."""
    await run_init(settings)
    async with open_resources(settings, "chaos-test") as res:
        fleet.start_all()
        try:
            with MediaServer(video.parent) as origin:
                async with AsyncTestClient(create_app(settings)) as client:
                    await authorize(client, res.db, admin=True)
                    yield Stack(settings, res, client, fleet, nats, fleet.folder, origin.url(video.name))
        finally:
            fleet.stop()
            await _drop_everything(settings, res)


Fault = Callable[[Stack, JobWatch], Awaitable[int]]


async def run_load(
    name: str, stack: Stack, baseline: Outcome, fault: Fault, notes: dict[str, Any] | None = None
) -> None:
    """Submit the load while `fault` runs; wait for every job; judge against the fault-free run (`notes`, filled
    by the fault, go into the figures)."""
    started = time.monotonic()
    ids: list[str] = []
    watch = JobWatch(stack.settings, ids)
    injector = asyncio.create_task(fault(stack, watch))
    await submit(stack.client, load_specs(), stack.source_url, name, ids)
    faults = await asyncio.wait_for(injector, timeout=LOAD_DEADLINE_SEC)
    rows = await watch.wait_all_ended()
    figures = await judge(
        name, faults, ids, rows, stack.res.storage, baseline, stack.folder, time.monotonic() - started, notes
    )
    assert_flawless(figures, stack.fleet.log_tail())
    assert faults >= 1
    await one_more_job(stack)


async def one_more_job(stack: Stack) -> None:
    """After the fault, the same gateway and workers still take and finish a new job."""
    extra = JobSpec(start_sec=16.0, end_sec=18.0, priority="fast")  # a range no job of the load asked for
    ids = await submit(stack.client, [extra], stack.source_url, "after-fault")
    rows = await JobWatch(stack.settings, ids).wait_all_ended()
    assert rows[ids[0]]["status"] == "done", (rows[ids[0]], stack.fleet.log_tail())


async def kill_each_stage(stack: Stack, watch: JobWatch) -> int:
    """SIGKILL each stage's worker once while it holds a message, and start a new one at once."""
    left = set(STAGES)
    async with asyncio.timeout(LOAD_DEADLINE_SEC):
        while left:
            for stage in sorted(left):
                if await holding(stack.res.js, stack.settings, stage):
                    stack.fleet.kill(stage)
                    stack.fleet.start_worker(stage)
                    left.discard(stage)
            if left and len(watch.ids) == len(load_specs()) and await watch.ended_count() == len(watch.ids):
                raise AssertionError(f"the load ended before stages {sorted(left)} were seen mid-job: give "
                                     f"tests.chaos.load_specs a job that passes them")
            await asyncio.sleep(POLL_SEC / 2)
    return len(STAGES)


async def restart_nats(stack: Stack, watch: JobWatch) -> int:
    await watch.wait_ended(FAULT_AFTER_ENDED)
    await stack.fleet.wait_started()
    await asyncio.to_thread(stack.restart_nats)
    return 1


async def kill_nats(stack: Stack, watch: JobWatch) -> int:
    await watch.wait_ended(FAULT_AFTER_ENDED)
    await stack.fleet.wait_started()
    await asyncio.to_thread(stack.kill_nats)
    return 1


async def test_nats_sigkill_mid_load(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    """A crash of the broker itself: whatever it lost of the messages it had acknowledged, the reaper publishes
    again from the job rows (STUCK_AFTER_SEC short here, so it looks within the load's deadline)."""
    async with chaos_stack(servers, tmp_path, sample_video, stuck_after_sec=LOST_CHECK_SEC) as stack:
        await run_load("nats_sigkill", stack, baseline, kill_nats)
        assert not stack.fleet.dead(), stack.fleet.log_tail()


async def test_sigkill_of_each_stage_worker_mid_job(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    async with chaos_stack(servers, tmp_path, sample_video) as stack:
        await run_load("sigkill_each_stage", stack, baseline, kill_each_stage)


async def test_nats_restart_mid_load(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    async with chaos_stack(servers, tmp_path, sample_video) as stack:
        await run_load("nats_restart", stack, baseline, restart_nats)
        assert not stack.fleet.dead(), stack.fleet.log_tail()


async def test_postgres_restart_mid_load(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    # Not under pytest's temp folder: a pytest session starting elsewhere resets its mode to 0700, and the
    # postgres user could no longer reach the data folder when the cluster restarts.
    pg_dir = Path(tempfile.mkdtemp(prefix="clipjet-chaos-pg-"))
    postgres = await asyncio.to_thread(start_postgres, pg_dir)
    port = urlsplit(postgres.url).port

    async def restart(stack: Stack, watch: JobWatch) -> int:
        nonlocal postgres
        await watch.wait_ended(FAULT_AFTER_ENDED)
        await stack.fleet.wait_started()
        postgres.stop()
        postgres = await asyncio.to_thread(start_postgres, pg_dir, port)
        return 1

    try:
        async with chaos_stack(servers, tmp_path, sample_video, database_url=postgres.url) as stack:
            await run_load("postgres_restart", stack, baseline, restart)
            assert not stack.fleet.dead(), stack.fleet.log_tail()
    finally:
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


S3_FAIL_EVERY = 5  # every 5th S3 request (20 %) is answered 503 SlowDown by the proxy


async def test_s3_503_injection_mid_load(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    """Every service talks to S3 through a proxy that answers every fifth request with 503 SlowDown."""
    counter = {"requests": 0}

    def every_fifth(request: Request) -> bool:
        counter["requests"] += 1
        return counter["requests"] % S3_FAIL_EVERY == 0

    upstream = urlsplit(servers.s3.url).port
    assert upstream is not None
    with FaultProxy(upstream, every_fifth).in_thread() as proxy:
        async with chaos_stack(servers, tmp_path, sample_video, s3_endpoint_url=proxy.url) as stack:

            async def count_503s(stack: Stack, watch: JobWatch) -> int:
                await watch.wait_ended(len(load_specs()))
                return len(proxy.failed)

            await run_load("s3_503_every_5th", stack, baseline, count_503s)


CLUSTER_NODES = 3  # NATS servers in the cluster scenario, every stream replicated on each
WORKER_NODES = ("node-a", "node-b")  # worker "nodes" of the cluster scenario: a SCRATCH_DIR (and node name) each
LEADER_CHECK_SEC = 1.0  # longest wait for one stream-info answer while the cluster elects a leader, s


@dataclass
class ClusterStack:
    """The cluster scenario: three NATS nodes, two worker nodes (the first also runs the reaper)."""

    stack: Stack
    cluster: NatsCluster
    nodes: list[Fleet]


@asynccontextmanager
async def cluster_stack(servers: Servers, folder: Path, video: Path, **overrides: Any) -> AsyncIterator[ClusterStack]:
    """A three-node NATS cluster (streams with three replicas, every client given every node's URL), two worker
    nodes with a scratch folder each, the reaper and the gateway."""
    cluster = await asyncio.to_thread(start_nats_cluster, folder / "nats", CLUSTER_NODES)
    try:
        settings = make_settings(servers, folder / WORKER_NODES[0], **{
            **CHAOS_TIMING, "nats_url": cluster.url, "nats_stream_replicas": CLUSTER_NODES, **overrides,
        })
        nodes = []
        for name in WORKER_NODES:
            (folder / name).mkdir(exist_ok=True)
            nodes.append(Fleet(msgspec.structs.replace(settings, scratch_dir=folder / name / "scratch"), folder / name))
        async with serving(settings, nodes[0], None, video) as stack:
            for node in nodes[1:]:
                node.start_workers()
            try:
                yield ClusterStack(stack, cluster, nodes)
            finally:
                for node in nodes[1:]:
                    node.stop()
    finally:
        await asyncio.to_thread(cluster.stop)


async def stream_leader(js: Any, stream: str) -> str | None:
    """The server name of the stream's leader, None while there is none (or no answer within LEADER_CHECK_SEC)."""
    try:
        info = await asyncio.wait_for(js.stream_info(stream), LEADER_CHECK_SEC)
    except Exception:  # no leader yet, or the client is moving to another node
        return None
    return info.cluster.leader if info.cluster else None


def kill_stream_leader(cs: ClusterStack, notes: dict[str, Any]) -> Fault:
    """Once the load is under way: SIGKILL the node leading the work stream, time until the stream has a new
    leader, start the node again and time until it is a current replica again."""

    async def fault(stack: Stack, watch: JobWatch) -> int:
        await watch.wait_ended(FAULT_AFTER_ENDED)
        for node in cs.nodes:
            await node.wait_started()
        stream = stack.settings.nats_stream
        leader = await stream_leader(stack.res.js, stream)
        assert leader is not None
        ended = await watch.ended_count()
        notes["killed_leader"], notes["jobs_open_at_kill"] = leader, len(load_specs()) - ended
        assert ended < len(load_specs()), "the load ended before the leader was killed: give it more jobs"
        killed_at = time.monotonic()
        await asyncio.to_thread(cs.cluster.kill, cs.cluster.index(leader))
        next_end = asyncio.create_task(ended_at(watch, ended + 1))
        async with asyncio.timeout(LOAD_DEADLINE_SEC):
            while (new_leader := await stream_leader(stack.res.js, stream)) in (None, leader):  # noqa: ASYNC110 - NATS
                await asyncio.sleep(POLL_SEC)
        notes["new_leader"] = new_leader
        notes["kill_to_new_leader_sec"] = round(time.monotonic() - killed_at, 2)
        await asyncio.to_thread(cs.cluster.restart, cs.cluster.index(leader))
        async with asyncio.timeout(LOAD_DEADLINE_SEC):
            while not await replica_current(stack.res.js, stream, leader):  # noqa: ASYNC110 - polling NATS
                await asyncio.sleep(POLL_SEC)
        notes["kill_to_replica_back_sec"] = round(time.monotonic() - killed_at, 2)
        notes["kill_to_next_job_end_sec"] = round(await next_end - killed_at, 2)
        return 1

    return fault


async def ended_at(watch: JobWatch, count: int) -> float:
    """The time (monotonic) at which `count` of the load's jobs had ended."""
    await watch.wait_ended(count)
    return time.monotonic()


async def replica_current(js: Any, stream: str, server: str) -> bool:
    """Whether `server` holds a caught-up copy of the stream (as leader or as a current follower)."""
    try:
        info = await asyncio.wait_for(js.stream_info(stream), LEADER_CHECK_SEC)
    except Exception:
        return False
    cluster = info.cluster
    return cluster is not None and (
        cluster.leader == server or any(peer.name == server and peer.current for peer in cluster.replicas or [])
    )


CLUSTER_TEST_TIMEOUT_SEC = 600  # the fault-free baseline (when this test is the module's first) and the load, loaded


@pytest.mark.long
@pytest.mark.timeout(CLUSTER_TEST_TIMEOUT_SEC)
async def test_nats_cluster_stream_leader_sigkill_mid_load(
    servers: Servers, baseline: Outcome, sample_video: Path, tmp_path: Path
) -> None:
    """Three NATS nodes, streams with three replicas, two worker nodes sharing the load: the work stream's leader
    is SIGKILLed mid-load and started again. Every job is done exactly once (one result, one `done` event, the
    fault-free bytes), and both worker nodes did part of the work."""
    notes: dict[str, Any] = {}
    async with cluster_stack(servers, tmp_path, sample_video) as cs:
        info = await cs.stack.res.js.stream_info(cs.stack.settings.nats_stream)
        assert info.config.num_replicas == CLUSTER_NODES
        await run_load("nats_cluster_leader_sigkill", cs.stack, baseline, kill_stream_leader(cs, notes), notes)
        done_per_node = [node.stage_messages_done() for node in cs.nodes]
        print(f"stage messages done per worker node: {dict(zip(WORKER_NODES, done_per_node, strict=True))}")
        assert all(done_per_node), (done_per_node, cs.stack.fleet.log_tail())
        assert not any(node.dead() for node in cs.nodes), [node.log_tail() for node in cs.nodes]
