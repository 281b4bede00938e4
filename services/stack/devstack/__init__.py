"""Start real NATS (JetStream), SeaweedFS S3 and PostgreSQL servers on loopback for the local stack and tests.

Synchronous and subprocess based. Each server runs in its own session (a Ctrl-C on the parent's terminal does
not kill it before an orderly stop) and writes its output to a log file under its data dir. Every readiness
wait is bounded: a server that does not come up is stopped and :class:`DevStackError` carries its log tail.
"""

from services.stack.devstack.nats_server import NatsCluster, start_nats, start_nats_cluster
from services.stack.devstack.postgres_server import (
    ensure_postgres,
    find_postgres_bindir,
    postgres_reachable,
    start_postgres,
)
from services.stack.devstack.process import (
    PACKAGE_FOR_BINARY,
    DevStackError,
    RunningServer,
    find_binary,
    free_port,
    log_tail,
    stop_with_parent,
)
from services.stack.devstack.s3_server import start_s3

__all__ = [
    "PACKAGE_FOR_BINARY", "DevStackError", "NatsCluster", "RunningServer", "ensure_postgres", "find_binary",
    "find_postgres_bindir", "free_port", "log_tail", "postgres_reachable", "start_nats", "start_nats_cluster",
    "start_postgres", "start_s3", "stop_with_parent",
]
