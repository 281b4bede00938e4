"""A NATS server with JetStream on loopback."""

from __future__ import annotations

from pathlib import Path

from shared.devstack.process import (
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
# JetStream's file store writes and fsyncs every message before it acknowledges the publish, so a server killed
# (SIGKILL, OOM, power loss) loses no message it acknowledged. nats-server's default ("2m") flushes and fsyncs
# in the background: a crash can lose the last acknowledged messages. Cost: see RELIABILITY.md (sync setting).
JETSTREAM_SYNC_INTERVAL = "always"
CONFIG_NAME = "nats-server.conf"


def start_nats(data_dir: Path, port: int | None = None, sync_interval: str = JETSTREAM_SYNC_INTERVAL) -> RunningServer:
    """``nats-server`` with JetStream stored in ``data_dir``; ready when its port and /healthz answer.

    ``sync_interval``: JetStream's `sync_interval` ("always", or a Go duration such as "2m", the server's default).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = port or free_port()
    monitor_port = free_ports(1, avoid={client_port})[0]
    config = data_dir / CONFIG_NAME
    config.write_text(f"jetstream {{\n  sync_interval: {sync_interval}\n}}\n")
    argv = [find_binary("nats-server"), "-c", str(config), "-js", "-a", LOOPBACK, "-p", str(client_port),
            "-sd", str(data_dir), "-m", str(monitor_port)]
    log_path = data_dir / "nats-server.log"
    monitor_url = f"http://{LOOPBACK}:{monitor_port}"
    server = RunningServer("nats", f"nats://{LOOPBACK}:{client_port}", spawn(argv, log_path),
                           {"monitor_url": monitor_url})
    wait_ready(server, lambda: tcp_open(client_port) and http_ok(f"{monitor_url}/healthz"),
                NATS_READY_TIMEOUT_S, log_path)
    return server

