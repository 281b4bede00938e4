"""A NATS server with JetStream on loopback, alone or as one node of a cluster (NatsCluster)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.stack.devstack.process import (
    LOOPBACK,
    RunningServer,
    find_binary,
    free_port,
    free_ports,
    http_ok,
    spawn,
    tcp_open,
    wait_ready,
)

NATS_READY_TIMEOUT_S = 10.0
CLUSTER_READY_TIMEOUT_S = 30.0  # a cluster is ready once every node's JetStream sees the meta leader
# JetStream's file store writes and fsyncs every message before it acknowledges the publish, so a server killed
# (SIGKILL, OOM, power loss) loses no message it acknowledged. nats-server's default ("2m") flushes and fsyncs
# in the background: a crash can lose the last acknowledged messages. Cost: see RELIABILITY.md (sync setting).
JETSTREAM_SYNC_INTERVAL = "always"
CONFIG_NAME = "nats-server.conf"
CLUSTER_NAME = "clipjet"


def start_nats(data_dir: Path, port: int | None = None, sync_interval: str = JETSTREAM_SYNC_INTERVAL) -> RunningServer:
    """``nats-server`` with JetStream stored in ``data_dir``; ready when its port and /healthz answer.

    ``sync_interval``: JetStream's `sync_interval` ("always", or a Go duration such as "2m", the server's default).
    """
    client_port = port or free_port()
    monitor_port = free_ports(1, avoid={client_port})[0]
    server = _spawn_nats(data_dir, client_port, monitor_port, sync_interval, [])
    _wait_nats(server, NATS_READY_TIMEOUT_S)
    return server


def _spawn_nats(
    data_dir: Path, client_port: int, monitor_port: int, sync_interval: str, cluster_args: list[str]
) -> RunningServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / CONFIG_NAME
    config.write_text(f"jetstream {{\n  sync_interval: {sync_interval}\n}}\n")
    argv = [find_binary("nats-server"), "-c", str(config), "-js", "-a", LOOPBACK, "-p", str(client_port),
            "-sd", str(data_dir), "-m", str(monitor_port), *cluster_args]
    log_path = data_dir / "nats-server.log"
    monitor_url = f"http://{LOOPBACK}:{monitor_port}"
    return RunningServer("nats", f"nats://{LOOPBACK}:{client_port}", spawn(argv, log_path),
                         {"monitor_url": monitor_url, "log_path": str(log_path)})


def _wait_nats(server: RunningServer, timeout: float) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    monitor_url = server.extra["monitor_url"]
    wait_ready(server, lambda: tcp_open(port) and http_ok(f"{monitor_url}/healthz"), timeout,
               Path(server.extra["log_path"]))


@dataclass(frozen=True)
class NodePorts:
    """One cluster node's fixed ports: a restarted node comes back on the same ones (and the same store)."""

    client: int
    cluster: int
    monitor: int


class NatsCluster:
    """``size`` nats-server processes on loopback routed to each other as one JetStream cluster, each with its
    own store (``data_dir``/n<i>), server name n<i> and ports; streams there may have up to ``size`` replicas.

    `url` lists every node (comma-separated, as NATS_URL takes it), so a client moves to another node when its
    own goes. Nodes can be SIGKILLed and restarted one by one (`kill`, `restart`)."""

    def __init__(self, data_dir: Path, size: int = 3, sync_interval: str = JETSTREAM_SYNC_INTERVAL) -> None:
        self.data_dir, self.sync_interval = data_dir, sync_interval
        flat = free_ports(3 * size)
        self.ports = [NodePorts(*flat[3 * i:3 * i + 3]) for i in range(size)]
        self.names = [f"n{i + 1}" for i in range(size)]
        self.nodes: list[RunningServer] = []
        try:
            for i in range(size):  # all started before any is awaited: JetStream needs a quorum to be ready
                self.nodes.append(self._spawn(i))
            for node in self.nodes:
                _wait_nats(node, CLUSTER_READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return ",".join(f"nats://{LOOPBACK}:{p.client}" for p in self.ports)

    def index(self, server_name: str) -> int:
        return self.names.index(server_name)

    def kill(self, i: int) -> None:
        """SIGKILL node i: nothing flushed on the way out."""
        proc = self.nodes[i].process
        assert proc is not None
        proc.kill()
        proc.wait(timeout=NATS_READY_TIMEOUT_S)

    def restart(self, i: int) -> None:
        """Start node i again (same name, ports and store); returns once it is healthy (caught up with the meta
        leader)."""
        self.nodes[i].stop()
        self.nodes[i] = self._spawn(i)
        _wait_nats(self.nodes[i], CLUSTER_READY_TIMEOUT_S)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def _spawn(self, i: int) -> RunningServer:
        ports = self.ports[i]
        routes = ",".join(f"nats-route://{LOOPBACK}:{p.cluster}" for j, p in enumerate(self.ports) if j != i)
        cluster_args = ["-n", self.names[i], "--cluster_name", CLUSTER_NAME,
                        "--cluster", f"nats://{LOOPBACK}:{ports.cluster}", "--routes", routes]
        server = _spawn_nats(self.data_dir / self.names[i], ports.client, ports.monitor, self.sync_interval,
                             cluster_args)
        server.name = f"nats {self.names[i]}"
        return server


def start_nats_cluster(data_dir: Path, size: int = 3) -> NatsCluster:
    """A JetStream cluster of ``size`` nodes on loopback, every node ready."""
    return NatsCluster(data_dir, size)
