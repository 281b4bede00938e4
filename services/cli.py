"""The `clipjet` command: clip a video through the API, run a service, the local stack, or maintenance tasks."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.client import commands as client
from shared.jobs.pipeline import STAGES as STAGE_NAMES
from shared.settings import Settings, load_settings

SCHEMAS_DIR = Path("schemas")
K8S_BASE_DIR = Path("k8s/base")


def _stop_on_signals(settings: Settings) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: the service drains (/readyz 503), finishes what it is doing and stops.
    The ops port (/metrics, /livez, /readyz) is served from here on."""
    from shared.runtime.ops import HEALTH, serve_ops, watch_event_loop

    serve_ops(settings.metrics_port, host=settings.metrics_host)
    watch_event_loop(settings.liveness_stall_sec)
    stop = asyncio.Event()

    def draining() -> None:
        HEALTH.mark_draining()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, draining)
    return stop


async def _run_worker(stage: str, settings: Settings) -> None:
    from services.registry import STAGES
    from shared.jobs.pipeline import DEFAULT_ROUTE_LENGTH
    from shared.net.fetchproxy import guarded_proxy, warn_if_open
    from shared.runtime.resources import open_resources
    from shared.runtime.worker import run_worker

    stop = _stop_on_signals(settings)
    warn_if_open(settings)
    await guarded_proxy()  # the process's guarded proxy for user URLs, up before the first message
    async with open_resources(settings, f"worker-{stage}", stop) as res:
        await run_worker(STAGES[stage], res, DEFAULT_ROUTE_LENGTH, stop)


async def _run_reaper(settings: Settings) -> None:
    from services.reaper.handler import run_reaper
    from shared.runtime.resources import open_resources

    stop = _stop_on_signals(settings)
    async with open_resources(settings, "reaper", stop) as res:
        await run_reaper(res, stop)


async def _run_notifier(settings: Settings) -> None:
    from services.notifier.run import run_notifier
    from shared.net.fetchproxy import guarded_proxy, warn_if_open
    from shared.runtime.resources import open_resources

    stop = _stop_on_signals(settings)
    warn_if_open(settings)
    await guarded_proxy()  # webhooks go through the same guarded proxy as sources
    async with open_resources(settings, "notifier", stop) as res:
        await run_notifier(res, stop)


def _run_gateway(settings: Settings, factory: str = "services.gateway.app:app_from_environment") -> None:
    """uvicorn serving `factory`'s app in GATEWAY_PROCESSES processes (bench/gateway_plain.py names another)."""
    import tempfile

    # every uvicorn process records into files here (set before prometheus_client is imported); this one serves
    # their sum on METRICS_PORT
    metrics_dir = tempfile.TemporaryDirectory(prefix="clipjet-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    import uvicorn

    from services.gateway.app import gateway_processes
    from shared.runtime.ops import serve_ops

    # the gateway's /livez and /readyz are on its API port
    serve_ops(settings.metrics_port, host=settings.metrics_host, probes=False)

    uvicorn.run(
        factory, factory=True, workers=gateway_processes(settings),
        host=settings.gateway_host, port=settings.gateway_port, http="httptools", loop="uvloop",
        log_level="warning", access_log=False, lifespan="on", log_config=None,  # logs: shared/runtime/logs.py
        # X-Forwarded-For is believed only from GATEWAY_TRUSTED_PROXIES: services/gateway/proxies.py (in the app, so
        # it also knows whether the direct peer is trusted, which decides whether a traceparent is honoured)
        proxy_headers=False,
    )


def _serve(command: str, service: Coroutine[Any, Any, None]) -> int:
    """Run a service until it stops: 0 when it stopped (a SIGTERM while it still waited for a dependency too);
    1 and one line naming the dependency when it gave up waiting (the log has the details, no traceback)."""
    from shared.runtime.startup import DependencyUnavailable, StopRequested

    try:
        asyncio.run(service)
    except StopRequested:
        return 0
    except DependencyUnavailable as exc:
        print(f"clipjet {command}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


def _init(settings: Settings, *, update_streams: bool, database_only: bool = False) -> int:
    """`clipjet init` (or `migrate`: the database part only): what was done, one line each; 1 and why on failure."""
    from services.init import InitFailed, run_init

    try:
        lines = asyncio.run(run_init(settings, update_streams=update_streams, database_only=database_only))
    except InitFailed as exc:
        print(f"clipjet init: FAILED: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in client.COMMANDS:  # the API client: no server module is imported, so it starts fast
        return client.main(argv)
    parser = argparse.ArgumentParser(prog="clipjet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    client.add_parsers(sub)
    sub.add_parser("gateway", help="run the REST gateway")
    worker = sub.add_parser("worker", help="run one stage's worker")
    worker.add_argument("stage", choices=sorted(STAGE_NAMES))
    sub.add_parser("reaper", help="run the reaper: outbox, expiry, stuck jobs, staging cleanup, partitions")
    sub.add_parser("notifier", help="run the notifier: POST signed webhooks when jobs end, retried for hours")
    init = sub.add_parser("init", help="apply migrations, create the NATS streams and consumers and the S3 bucket "
                          "(run before the services; safe to run again)")
    init.add_argument("--update-streams", action="store_true",
                      help="also set clipjet's own fields of existing streams and consumers (replicas and limits "
                      "the operator set are kept)")
    sub.add_parser("migrate", help="only the database part of `init`: migrations, partitions, DB_APP_ROLE's grants")
    from services import keyscmd

    keyscmd.add_parser(sub)
    sub.add_parser("models", help="verify the speech model (ASR_MODEL) and assemble it (and its whisper.cpp ggml file "
                   "when ASR_ENGINE=whisper.cpp) into ASR_MODELS_DIR now")
    schemas = sub.add_parser("schemas", help="write schemas/ from the msgspec contracts")
    schemas.add_argument("--dir", type=Path, default=SCHEMAS_DIR)
    k8s = sub.add_parser("k8s", help="write the kustomize base k8s/base from the stage registry")
    k8s.add_argument("--dir", type=Path, default=K8S_BASE_DIR)
    stack = sub.add_parser("stack", help="bring up NATS, PostgreSQL, S3 and every service on loopback")
    stack.add_argument("--demo", action="store_true", help="clip a generated sample once everything is up")
    stack.add_argument("--exit-after-demo", action="store_true", help="stop after the demo (for scripts)")
    stack.add_argument("--scale", action="append", default=[], metavar="STAGE=N[,STAGE=N]",
                       help="worker processes per stage, e.g. trim=2,fetch=2 (adds to STACK_SCALE; default 1)")
    args = parser.parse_args(argv)
    if args.command in client.COMMANDS:
        return client.run(args)
    from shared.runtime.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    if args.command in ("worker", "reaper", "notifier"):  # the gateway starts it in each of its processes
        from shared.runtime import tracing

        tracing.start(settings, args.stage if args.command == "worker" else args.command)
    match args.command:
        case "gateway":
            _run_gateway(settings)
        case "worker":
            return _serve(f"worker {args.stage}", _run_worker(args.stage, settings))
        case "reaper":
            return _serve("reaper", _run_reaper(settings))
        case "notifier":
            return _serve("notifier", _run_notifier(settings))
        case "init":
            return _init(settings, update_streams=args.update_streams)
        case "migrate":
            return _init(settings, update_streams=False, database_only=True)
        case "keys":
            return asyncio.run(keyscmd.run(args, settings))
        case "models":
            from shared.asr.models import resolve_model

            ref = resolve_model(settings.asr_model, settings.asr_models_dir)
            print(ref.path)
            if settings.asr_engine == "whisper.cpp":  # its ggml file, converted from that model once
                from shared.asr.ggml import ggml_model

                print(ggml_model(ref.path, ref.name, settings.asr_models_dir, settings.asr_whispercpp_weights))
        case "schemas":
            from shared.jobs.schemas import write_schemas

            for path in write_schemas(args.dir):
                print(path)
        case "k8s":
            from services.k8s import write_manifests
            from services.registry import STAGES

            for path in write_manifests(args.dir, list(STAGES)):
                print(path)
        case "stack":
            from services.stack.localstack import parse_scale, run_stack
            from shared.jobs.pipeline import installed_stages

            try:
                scale = parse_scale(",".join([settings.stack_scale, *args.scale]),
                                    installed_stages(settings.installed_stages))
            except ValueError as exc:
                parser.error(str(exc))
            return run_stack(settings, demo=args.demo, exit_after_demo=args.exit_after_demo, scale=scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
