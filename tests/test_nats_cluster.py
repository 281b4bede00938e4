"""A three-node NATS cluster from services.stack.devstack: streams made by shared.runtime.bus get NATS_STREAM_REPLICAS
copies,
and losing the stream's leader (SIGKILL) loses no acknowledged message and lets a client given every node's URL
go on publishing. The whole pipeline on such a cluster: tests/test_chaos.py (nats_cluster_leader_sigkill)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from services.stack.devstack import NatsCluster, start_nats_cluster
from shared.runtime import bus
from shared.settings import Settings, load_settings

NODES = 3
MESSAGES = 40  # published before the kill, and as many after it
PUBLISH_TRY_SEC = 1.0  # one publish try while the cluster elects a new leader, s
DEADLINE_SEC = 60.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    started = await asyncio.to_thread(start_nats_cluster, tmp_path / "nats", NODES)
    yield started
    await asyncio.to_thread(started.stop)


def cluster_settings(cluster: NatsCluster) -> Settings:
    return load_settings({}, nats_url=cluster.url, nats_stream="CLUSTER", subject_prefix="cluster",
                         nats_stream_replicas=NODES)


async def publish_until_acked(js: object, subjects: bus.Subjects, i: int) -> bool:
    """Publish message i (Nats-Msg-Id per message) until the stream acknowledges it; whether it was a duplicate."""
    async with asyncio.timeout(DEADLINE_SEC):
        while True:
            try:
                ack = await asyncio.wait_for(
                    bus.publish(js, subjects.stage("fetch", "normal"), b"%d" % i, f"m{i}"), PUBLISH_TRY_SEC
                )
                return bool(ack.duplicate)
            except Exception:  # no leader yet, or the client is moving to another node: the same message again
                await asyncio.sleep(0.1)


async def test_streams_are_replicated_and_survive_their_leader_being_killed(cluster: NatsCluster) -> None:
    settings = cluster_settings(cluster)
    nc: NatsClient = await bus.connect(settings, "cluster-test")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js, settings)  # what `clipjet init` makes, with the replicas setting
        for stream in (settings.nats_stream, bus.events_stream(settings)):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == NODES
            assert info.cluster is not None and len(info.cluster.replicas or []) == NODES - 1
        subjects = bus.Subjects(settings.subject_prefix)
        for i in range(MESSAGES):
            assert not await publish_until_acked(js, subjects, i)
        leader = (await js.stream_info(settings.nats_stream)).cluster.leader
        await asyncio.to_thread(cluster.kill, cluster.index(leader))
        for i in range(MESSAGES, 2 * MESSAGES):  # while the cluster elects a new leader, and after
            assert not await publish_until_acked(js, subjects, i)
        assert await publish_until_acked(js, subjects, 0)  # still de-duplicated: the window moved with the leader
        info = await js.stream_info(settings.nats_stream)
        assert info.cluster.leader != leader
        assert info.state.messages == 2 * MESSAGES  # nothing acknowledged was lost, nothing stored twice
        await asyncio.to_thread(cluster.restart, cluster.index(leader))
        async with asyncio.timeout(DEADLINE_SEC):
            while not any(  # noqa: ASYNC110 - polling the cluster
                p.name == leader and p.current
                for p in (await js.stream_info(settings.nats_stream)).cluster.replicas or []
            ):
                await asyncio.sleep(0.2)
    finally:
        await nc.close()
