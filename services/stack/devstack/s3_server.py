"""SeaweedFS (`weed mini`) as an S3 server on loopback, every port chosen here."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from services.stack.devstack.process import (
    LOOPBACK,
    PROBE_TIMEOUT_S,
    RunningServer,
    find_binary,
    free_ports,
    spawn,
    wait_ready,
)

S3_READY_TIMEOUT_S = 30.0
S3_REGION = "us-east-1"
WEED_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port",
                   "s3.debug.port")
# weed creates these unix sockets in the system temp dir, named by gRPC port; not all are removed on SIGTERM.
WEED_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")


def _weed_ports(s3_port: int | None) -> dict[str, int]:
    """A free port per weed port flag, skipping ports that a stale gRPC socket in the temp dir names."""
    temp_dir = Path(tempfile.gettempdir())
    while True:
        ports = free_ports(len(WEED_PORT_FLAGS) + 1, avoid={s3_port} if s3_port else ())
        if not any(any(temp_dir.glob(f"seaweedfs-*-grpc-{p}.sock")) for p in ports):
            return {**dict(zip(WEED_PORT_FLAGS, ports, strict=False)), "s3.port": s3_port or ports[-1]}


def _s3_client(url: str, access_key: str, secret_key: str) -> Any:
    """A botocore S3 client for a local endpoint: SigV4, path style, one attempt, short timeouts."""
    from botocore.config import Config
    from botocore.session import get_session

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    retries={"total_max_attempts": 1}, connect_timeout=PROBE_TIMEOUT_S,
                    read_timeout=PROBE_TIMEOUT_S)
    return get_session().create_client("s3", endpoint_url=url, region_name=S3_REGION, config=config,
                                       aws_access_key_id=access_key, aws_secret_access_key=secret_key)


def start_s3(data_dir: Path, access_key: str, secret_key: str, port: int | None = None) -> RunningServer:
    """``weed mini`` on loopback with every port chosen here and one static S3 identity (``access_key``);
    ready when a SigV4 ListBuckets succeeds."""
    for sub in ("data", "logs", "admin"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    identity = {"name": "admin", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    s3_config = data_dir / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))
    s3_config.chmod(0o600)
    ports = _weed_ports(port)
    argv = [find_binary("weed"), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir / 'data'}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", "-master.telemetry=false", "-webdav=false",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
            f"-admin.dataDir={data_dir / 'admin'}", f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.localSocket={data_dir / 's3.sock'}", *(f"-{flag}={p}" for flag, p in ports.items())]
    log_path = data_dir / "weed.log"
    url = f"http://{LOOPBACK}:{ports['s3.port']}"
    extra = {"access_key": access_key, "secret_key": secret_key, "region": S3_REGION,
             "master_url": f"http://{LOOPBACK}:{ports['master.port']}",
             "filer_url": f"http://{LOOPBACK}:{ports['filer.port']}"}
    sockets = [Path(tempfile.gettempdir()) / f"seaweedfs-{kind}-grpc-{ports[f'{kind}.port.grpc']}.sock"
               for kind in WEED_GRPC_SOCKETS]
    server = RunningServer("s3", url, spawn(argv, log_path), extra, cleanup_paths=sockets)
    client = _s3_client(url, access_key, secret_key)
    wait_ready(server, lambda: "Buckets" in client.list_buckets(), S3_READY_TIMEOUT_S, log_path)
    return server

