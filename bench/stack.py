"""A benchmark stack: real servers on loopback, every service as its own process (as in production)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from services.registry import STAGES
from services.stack.devstack import ensure_postgres, free_port, start_nats, start_s3
from services.stack.localstack import Child, init_in_child, spawn_service, wait_healthy
from shared.settings import Settings, load_settings

S3_KEY, S3_SECRET = "bench", "bench-secret-key"
STOP_GRACE_SEC = 10.0


@dataclass
class BenchStack:
    settings: Settings
    base_url: str
    children: list[Child]


@contextmanager
def bench_stack(data_dir: Path, *, reaper: bool = False, **overrides: object) -> Iterator[BenchStack]:
    """NATS and S3 of its own, PostgreSQL reused or private, gateway and one process per stage (and the reaper,
    which empties the staging of ended jobs, with `reaper`)."""
    servers = [start_nats(data_dir / "nats"), start_s3(data_dir / "s3", S3_KEY, S3_SECRET)]
    children: list[Child] = []
    try:
        postgres = ensure_postgres(load_settings().database_url, data_dir / "pg")
        servers.append(postgres)
        tag = secrets.token_hex(3)
        settings = load_settings(
            {}, nats_url=servers[0].url, s3_endpoint_url=servers[1].url, s3_access_key=S3_KEY,
            s3_secret_key=S3_SECRET, database_url=postgres.url, db_schema=f"bench_{tag}", s3_bucket=f"bench-{tag}",
            scratch_dir=str(data_dir / "scratch"), gateway_port=free_port(),
            # the pipeline's figures; the gateway's own (auth on) are measured apart
            **({"auth": "off", "log_level": "warning"} | overrides),
        )
        base_url = f"http://127.0.0.1:{settings.gateway_port}"
        init_in_child(settings)
        children.append(spawn_service(settings, "gateway", "gateway"))
        with httpx.Client() as http:
            wait_healthy(http, base_url, children)
        children += [spawn_service(settings, stage, "worker", stage) for stage in STAGES]
        if reaper:
            children.append(spawn_service(settings, "reaper", "reaper"))
        yield BenchStack(settings, base_url, children)
    finally:
        for child in children:
            child.stop(STOP_GRACE_SEC)
        for server in reversed(servers):
            server.stop()


def with_settings(stack: BenchStack, **changes: object) -> Settings:
    return msgspec.structs.replace(stack.settings, **changes)
