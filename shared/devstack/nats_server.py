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


def start_nats(data_dir: Path, port: int | None = None) -> RunningServer:
    """``nats-server`` with JetStream stored in ``data_dir``; ready when its port and /healthz answer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = port or free_port()
    monitor_port = free_ports(1, avoid={client_port})[0]
    argv = [find_binary("nats-server"), "-js", "-a", LOOPBACK, "-p", str(client_port),
            "-sd", str(data_dir), "-m", str(monitor_port)]
    log_path = data_dir / "nats-server.log"
    monitor_url = f"http://{LOOPBACK}:{monitor_port}"
    server = RunningServer("nats", f"nats://{LOOPBACK}:{client_port}", spawn(argv, log_path),
                           {"monitor_url": monitor_url})
    wait_ready(server, lambda: tcp_open(client_port) and http_ok(f"{monitor_url}/healthz"),
                NATS_READY_TIMEOUT_S, log_path)
    return server

