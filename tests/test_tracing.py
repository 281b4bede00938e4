"""OpenTelemetry: one job is one connected trace, rooted at the gateway request, through NATS (trace context
in message headers), every stage and S3, with the job id on every span; in one process (the SDK's in-memory
exporter) and across processes (OTLP/HTTP to a receiver here). A message published without trace headers
starts a trace of its own at the stage."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gateway.app import create_app
from services.gateway.proxies import behind_proxies
from services.gateway.tracing import request_spans
from services.stack.devstack import free_port
from shared.jobs.contracts import ClipJobMessage, UrlSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import ENTRY_STAGE
from shared.media.avcut import IN_PROCESS_CUT_SPAN
from shared.runtime import bus, tracing
from shared.runtime.resources import Resources
from shared.runtime.tracing_export import new_provider
from shared.settings import Settings
from tests.chaos import Fleet
from tests.conftest import Workers, authorize, make_key, wait_for_job
from tests.gateway_proc import gateway_process
from tests.http_source import MediaServer
from tests.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.test_webhooks import FAST_RETRIES, Receiver, ended_job, gateway, notifier, wait_until, webhook_state

ROOT = Path(__file__).resolve().parents[1]
COPY_ROUTE = ("fetch", "trim", "upload")  # a stream-copy job's stages (a URL source's range: staged, then cut)
FETCHER_CUT_ROUTE = ("fetch",)  # a clip of media in storage (a batch's staged span): cut, stored, ended by the fetcher
SPANS_WAIT_SEC = 30.0  # longest wait for the last stage's span to be exported
PROCESS_JOB_TIMEOUT_SEC = 180.0  # a job through freshly started processes on 2 busy cores
EXPORT_DELAY_MS = "100"  # OTEL_BSP_SCHEDULE_DELAY of the processes under test: export soon
POLL_SEC = 0.1


@pytest.fixture(scope="session")
def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return new_provider("test", SimpleSpanProcessor(exporter)), exporter


@pytest.fixture
def spans(memory_provider: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process for one test (ask for it before the gateway and workers are made)."""
    provider, exporter = memory_provider
    exporter.clear()
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def _received(span: ReadableSpan) -> ReceivedSpan:
    context, parent = span.get_span_context(), span.parent
    return ReceivedSpan(
        f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{parent.span_id:016x}" if parent else "",
        span.name, span.kind.name, "test", dict(span.attributes or {}),
    )


def _kind(span: ReceivedSpan) -> str:
    return span.kind if isinstance(span.kind, str) else ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")


def job_trace(spans: list[ReceivedSpan], job_id: str, root_name: str,
              other_requests: tuple[str, ...] = ("GET ",)) -> list[ReceivedSpan]:
    """The job's trace, checked: one tree rooted at the span `root_name` with the job id on every span, and no
    span of the job's outside it except other HTTP requests' (`other_requests`: status polls)."""
    roots = [s for s in spans if s.name == root_name and s.attributes.get(tracing.JOB_ID) == job_id]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    assert root.parent_id == "", root
    tree = [s for s in spans if s.trace_id == root.trace_id]
    ids = {s.span_id for s in tree}
    for span in tree:
        assert span.attributes.get(tracing.JOB_ID) == job_id, span
        assert span is root or span.parent_id in ids, f"{span.name} hangs from no span of the trace"
    trace_roots = {s.trace_id: s for s in spans if s.parent_id == ""}
    for span in spans:
        if span.attributes.get(tracing.JOB_ID) == job_id and span.trace_id != root.trace_id:
            other = trace_roots[span.trace_id]
            assert _kind(other) == "SERVER" and other.name.startswith(other_requests), f"{span.name} is elsewhere"
    return tree


def _parent_of(tree: list[ReceivedSpan], span: ReceivedSpan) -> ReceivedSpan:
    return next(s for s in tree if s.span_id == span.parent_id)


def assert_stages_linked(tree: list[ReceivedSpan], stages: tuple[str, ...] = COPY_ROUTE) -> None:
    """Every stage handled the job in a CONSUMER span, the child of the PRODUCER span that sent its message;
    S3 calls and cuts (ffmpeg runs, in-process cuts) nest under them."""
    for stage in stages:
        consumer = next(s for s in tree if s.name == f"process {stage}")
        assert _kind(consumer) == "CONSUMER"
        producer = _parent_of(tree, consumer)
        assert _kind(producer) == "PRODUCER" and producer.name.endswith(f".{stage}.normal"), producer
    assert any(_kind(s) == "CLIENT" and s.name == "S3.PutObject" for s in tree)
    assert any(s.name in ("ffmpeg", IN_PROCESS_CUT_SPAN) for s in tree)  # a cut: by ffmpeg, or in-process


def _under(tree: list[ReceivedSpan], span: ReceivedSpan, ancestor: ReceivedSpan) -> bool:
    while span.parent_id:
        span = _parent_of(tree, span)
        if span is ancestor:
            return True
    return False


async def _exported(exporter: InMemorySpanExporter, name: str) -> list[ReceivedSpan]:
    """Every span exported, once one called `name` is among them (bounded)."""
    async with asyncio.timeout(SPANS_WAIT_SEC):
        while not any(s.name == name for s in exporter.get_finished_spans()):  # noqa: ASYNC110 - a list
            await asyncio.sleep(POLL_SEC)
    return [_received(s) for s in exporter.get_finished_spans()]


async def test_a_job_is_one_connected_trace(
    spans: InMemorySpanExporter, settings: Settings, resources: Resources, workers: Workers, sample_video: Path
) -> None:
    workers.start(*COPY_ROUTE)
    async with AsyncTestClient(create_app(settings)) as client:
        await authorize(client, resources.db, admin=True)
        with MediaServer(sample_video.parent) as origin:
            response = await client.post("/api/jobs", json={
                "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 4.0, "endSec": 7.0,
            })
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert (await wait_for_job(client, job_id))["status"] == "done"
        assert (await client.get("/health")).status_code == 200
    exported = await _exported(spans, "process upload")
    tree = job_trace(exported, job_id, "POST /api/jobs")
    assert_stages_linked(tree)
    assert not [s for s in exported if s.attributes.get("http.route") == "/health"]  # probes are not traced
    server = next(s for s in tree if s.parent_id == "")
    assert (_kind(server), server.attributes["http.response.status_code"]) == ("SERVER", 202)


async def test_a_batch_is_one_trace_naming_its_jobs(
    spans: InMemorySpanExporter, settings: Settings, resources: Resources, workers: Workers, sample_video: Path
) -> None:
    workers.start(*COPY_ROUTE)
    async with AsyncTestClient(create_app(settings)) as client:
        await authorize(client, resources.db, admin=True)
        with MediaServer(sample_video.parent) as origin:
            response = await client.post("/api/jobs", json={
                "source": {"type": "url", "url": origin.url(sample_video.name)},
                "clips": [{"startSec": 2.0, "endSec": 5.0}, {"startSec": 8.0, "endSec": 11.0}],
            })
            assert response.status_code == 202, response.text
            accepted = response.json()
            job_ids = [job["id"] for job in accepted["jobs"]]
            for job_id in job_ids:
                assert (await wait_for_job(client, job_id))["status"] == "done"
    async with asyncio.timeout(SPANS_WAIT_SEC):
        while sum(s.name == "process fetch" for s in spans.get_finished_spans()) < len(job_ids):  # noqa: ASYNC110
            await asyncio.sleep(POLL_SEC)
    exported = [_received(s) for s in spans.get_finished_spans()]
    root = next(s for s in exported if s.attributes.get(tracing.BATCH_ID) == accepted["batchId"])
    assert (root.name, root.parent_id, list(root.attributes[tracing.JOB_IDS])) == ("POST /api/jobs", "", job_ids)
    tree = [s for s in exported if s.trace_id == root.trace_id]
    ids = {s.span_id for s in tree}
    assert all(s is root or s.parent_id in ids for s in tree)
    assert all(s is root or s.attributes.get(tracing.JOB_ID) in job_ids for s in tree)
    for job_id in job_ids:  # each job reads the batch's span from storage: the fetcher cuts its clip
        job_tree = [s for s in tree if s is root or s.attributes.get(tracing.JOB_ID) == job_id]
        assert_stages_linked(job_tree, FETCHER_CUT_ROUTE)
        assert not [s for s in job_tree if s.name == "process trim"]
        fetch = next(s for s in job_tree if s.name == "process fetch")
        assert any(s.name in ("ffmpeg", IN_PROCESS_CUT_SPAN) and _under(job_tree, s, fetch)  # the cut, in the fetch
                   for s in job_tree)


@pytest.mark.settings(webhook_max_attempts=3, **FAST_RETRIES)
async def test_a_webhook_retried_by_the_notifier_stays_in_the_jobs_trace(
    spans: InMemorySpanExporter, settings: Settings, resources: Resources
) -> None:
    async with Receiver([500, 200]).running() as receiver, gateway(settings, resources) as (client, _):
        job_id = await ended_job(client, webhook=receiver.url)  # canceled: the cancel request publishes its end
        async with notifier(resources):
            await wait_until(lambda: webhook_state(client, job_id, "delivered"), "the retry to land")
    async with asyncio.timeout(SPANS_WAIT_SEC):
        while sum(s.name == "process notify" for s in spans.get_finished_spans()) < 2:  # noqa: ASYNC110
            await asyncio.sleep(POLL_SEC)
    cancel = "POST /api/jobs/{job_id}/cancel"
    tree = job_trace([_received(s) for s in spans.get_finished_spans()], job_id, cancel, ("GET ", "POST /api/jobs"))
    tries = {s.attributes[tracing.OUTCOME]: s for s in tree if s.name == "process notify"}
    first, retry = tries["failing"], tries["delivered"]  # (a "waiting" delivery may come between them)
    republished = _parent_of(tree, retry)
    assert _kind(republished) == "PRODUCER" and ".webhook_retry." in republished.name
    assert _parent_of(tree, republished) == first


async def test_a_message_without_trace_headers_starts_a_trace_at_the_stage(
    spans: InMemorySpanExporter, settings: Settings, resources: Resources, workers: Workers, sample_video: Path
) -> None:
    workers.start(*COPY_ROUTE)
    async with AsyncTestClient(create_app(settings)) as client:
        await authorize(client, resources.db, admin=True)
        with MediaServer(sample_video.parent) as origin:
            job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url=origin.url(sample_video.name)),
                                 start_sec=4.0, end_sec=7.0)
            subject = resources.subjects.stage(ENTRY_STAGE, job.priority)
            # what an internal system does: the contract's body, no trace context
            await resources.js.publish(subject, msgspec.json.encode(job),
                                       headers={"Nats-Msg-Id": bus.msg_id(job.id, ENTRY_STAGE)})
            assert (await wait_for_job(client, job.id, may_be_unknown=True))["status"] == "done"
    tree = job_trace(await _exported(spans, "process upload"), job.id, f"process {ENTRY_STAGE}")
    assert_stages_linked(tree, COPY_ROUTE[1:])


async def test_processes_export_one_connected_trace(
    settings: Settings, resources: Resources, sample_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS)
    async with otlp_receiver() as receiver:
        traced = msgspec.structs.replace(settings, otel_exporter_otlp_endpoint=receiver.url)
        fleet = Fleet(traced, tmp_path)
        try:
            for stage in COPY_ROUTE:
                fleet.start_worker(stage)
            with gateway_process(traced, free_port()) as url, MediaServer(sample_video.parent) as origin:
                token = await make_key(resources.db, admin=True)
                async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
                    response = await http.post("/api/jobs", json={
                        "source": {"type": "url", "url": origin.url(sample_video.name)}, "startSec": 4.0,
                        "endSec": 7.0,
                    })
                    assert response.status_code == 202, response.text
                    job_id = response.json()["id"]
                    assert (await _poll_done(http, job_id))["status"] == "done", fleet.log_tail()
                    async with asyncio.timeout(SPANS_WAIT_SEC):
                        while not any(s.name == "process upload" for s in receiver.spans):  # noqa: ASYNC110
                            await asyncio.sleep(POLL_SEC)
        finally:
            await asyncio.to_thread(fleet.stop)
        tree = job_trace(list(receiver.spans), job_id, "POST /api/jobs")
    assert_stages_linked(tree)
    services = {s.service for s in tree}
    assert {"clipjet-gateway", *(f"clipjet-{stage}" for stage in COPY_ROUTE)} <= services


async def _poll_done(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(PROCESS_JOB_TIMEOUT_SEC):
        while True:
            body = (await http.get(f"/api/jobs/{job_id}")).json()
            if body["status"] in ("done", "failed", "canceled"):
                return body
            await asyncio.sleep(POLL_SEC)


def test_tracing_off_installs_nothing() -> None:
    """No endpoint: a gateway process loads no SDK and adds no middleware (the hot path is as without tracing)."""
    probe = ("import sys\nfrom services.gateway.app import app_from_environment\n"
             "from services.gateway.tracing import span_per_request\nfrom shared.runtime import tracing\n"
             "app = app_from_environment().__wrapped__\n"
             "spans = any(getattr(m, 'func', m) is span_per_request for m in app.middleware)\n"
             "print(tracing.active(), spans, any(m.startswith('opentelemetry.sdk') for m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60, check=True).stdout
    assert out.split() == ["False", "False", "False"]


async def test_a_publish_carries_the_trace_context_only_when_tracing_is_on(
    memory_provider: tuple[TracerProvider, InMemorySpanExporter], resources: Resources
) -> None:
    subject = resources.subjects.stage(ENTRY_STAGE, "normal")
    heard: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def keep(msg: Any) -> None:
        heard.put_nowait(dict(msg.headers or {}))

    await resources.nc.subscribe(subject, cb=keep)
    job_id = str(uuid7())
    await bus.publish(resources.js, subject, b"{}", "off", job_id)
    assert "traceparent" not in await asyncio.wait_for(heard.get(), SPANS_WAIT_SEC)
    tracing.use_provider(memory_provider[0])
    try:
        await bus.publish(resources.js, subject, b"{}", "on", job_id)
    finally:
        tracing.use_provider(None)
    context = (await asyncio.wait_for(heard.get(), SPANS_WAIT_SEC))["traceparent"]
    sent = next(s for s in memory_provider[1].get_finished_spans() if s.name == f"send {subject}")
    assert context.startswith(f"00-{sent.context.trace_id:032x}-{sent.context.span_id:016x}-")
    assert sent.attributes is not None and sent.attributes[tracing.JOB_ID] == job_id


CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
PROXY = "10.9.9.9"  # GATEWAY_TRUSTED_PROXIES in the trust tests
STRANGER = "203.0.113.5"


async def _request_through_spans(trust_client_context: bool, peer: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """One HTTP request through the gateway's proxy handling and span middleware (as app_from_environment stacks
    them); the scope the app saw."""
    seen: dict = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stacked = behind_proxies(request_spans(trust_client_context)(app), f"{PROXY}/32")
    scope = {"type": "http", "method": "GET", "path": "/api/jobs", "headers": headers, "client": (peer, 4000)}

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    await stacked(scope, receive, send)
    return seen


@pytest.mark.parametrize(("trust_client_context", "peer", "honoured"), [
    (False, STRANGER, False), (False, PROXY, True), (True, STRANGER, True),
])
async def test_a_callers_trace_context_is_honoured_only_when_trusted(
    spans: InMemorySpanExporter, trust_client_context: bool, peer: str, honoured: bool
) -> None:
    """A caller's `traceparent` makes the request span its child only from a trusted proxy or with
    OTEL_TRUST_CLIENT_CONTEXT; anyone else's is a link of a new trace (no forced sampling, no joined traces)."""
    headers = [(b"traceparent", CALLER_TRACEPARENT.encode()), (b"x-forwarded-for", b"198.51.100.7")]
    seen = await _request_through_spans(trust_client_context, peer, headers)
    (span,) = spans.get_finished_spans()
    trace_id = f"{span.context.trace_id:032x}"
    if honoured:
        assert trace_id == CALLER_TRACE_ID and span.parent is not None
        assert f"{span.parent.span_id:016x}" == CALLER_SPAN_ID
    else:
        assert trace_id != CALLER_TRACE_ID and span.parent is None
        assert [f"{link.context.span_id:016x}" for link in span.links] == [CALLER_SPAN_ID]
    # X-Forwarded-For names the client only when a trusted proxy sent it
    assert seen["client"][0] == ("198.51.100.7" if peer == PROXY else peer)


async def test_oversized_trace_headers_are_ignored_without_warnings(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Over-long traceparent/tracestate/baggage headers are dropped before the propagators see them (which would
    log a warning per request)."""
    headers = [(b"traceparent", b"00-" + b"a" * 600), (b"tracestate", b"k=" + b"v" * 600),
               (b"baggage", b"k=" + b"v" * 9000)]
    with caplog.at_level(logging.WARNING):
        for trust in (True, False):
            await _request_through_spans(trust, PROXY, headers)
            await _request_through_spans(trust, STRANGER, headers)
    assert len(spans.get_finished_spans()) == 4
    assert all(s.parent is None and not s.links for s in spans.get_finished_spans())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []


def test_the_gateway_process_believes_forwarded_for_only_from_its_trusted_proxies() -> None:
    """app_from_environment (what uvicorn serves; uvicorn's own proxy handling is off) rewrites the client from
    X-Forwarded-For only for a peer in GATEWAY_TRUSTED_PROXIES, and marks that peer as trusted."""
    probe = ("import asyncio\nfrom services.gateway.app import app_from_environment\n"
             "from services.gateway.proxies import peer_trusted\napp = app_from_environment()\n"
             "async def main(peer):\n"
             "    scope = {'type': 'http', 'method': 'GET', 'path': '/livez', 'raw_path': b'/livez', "
             "'query_string': b'', 'headers': [(b'x-forwarded-for', b'198.51.100.7')], 'client': (peer, 1), "
             "'server': ('127.0.0.1', 80), 'scheme': 'http', 'http_version': '1.1', 'root_path': '', "
             "'asgi': {'version': '3.0'}}\n"
             "    async def receive(): return {'type': 'http.request', 'body': b''}\n"
             "    async def send(message): pass\n"
             "    await app(scope, receive, send)\n"
             "    print(scope['client'][0], peer_trusted(scope))\n"
             f"asyncio.run(main({PROXY!r}))\nasyncio.run(main({STRANGER!r}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {
        "PYTHONPATH": str(ROOT), "GATEWAY_TRUSTED_PROXIES": f"{PROXY}/32", "LOG_LEVEL": "warning"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=60, check=True).stdout
    assert out.split() == ["198.51.100.7", "True", STRANGER, "False"]
