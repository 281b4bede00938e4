"""Jobs published straight onto `<prefix>.fetch.<priority>` obey the gateway's rules, and their publisher learns
the outcome: a failed row with the gateway's code, a `job_events` entry, and an end event that a durable
JetStream consumer created after the job ended still reads."""

from __future__ import annotations

import asyncio
import json
import posixpath
import secrets
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.gateway.uploads import upload_key
from shared.db import jobs
from shared.errors import Permanent
from shared.jobs.contracts import JobEvent
from shared.jobs.ids import uuid7
from shared.jobs.jobrules import check_upload_key
from shared.jobs.pipeline import ENTRY_STAGE
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.runtime.worker import finish_job_failed
from tests.conftest import JOB_TIMEOUT_SEC, POLL_SEC, Workers

URL_SOURCE = {"type": "url", "url": "https://media.example/talk.mp4"}
EVENT_WAIT_SEC = 5.0  # longest a durable consumer waits for a kept end event
MAX_CLIP_SEC = 10.0  # MAX_CLIP_SECONDS in these tests: the setting, not a constant, decides

REFUSED = [
    pytest.param({"source": {"type": "upload", "key": "results/sha256/aa/secret/clip.mp4"}}, "upload_not_found",
                 id="result-key"),
    pytest.param({"source": {"type": "upload", "key": f"staging/{uuid7()}/source.mp4"}}, "upload_not_found",
                 id="other-jobs-staging"),
    pytest.param({"source": {"type": "upload", "key": "uploads/../results/x/clip.mp4"}}, "upload_not_found",
                 id="dot-dot-key"),
    pytest.param({"startSec": 0, "endSec": MAX_CLIP_SEC + 1}, "clip_too_long", id="too-long"),
    pytest.param({"startSec": 5, "endSec": 5}, "end_before_start", id="empty-range"),
    pytest.param({"startSec": -1}, "start_negative", id="negative-start"),  # refused by decoding (msgspec.Meta)
    pytest.param({"startSec": [1]}, "invalid_field", id="undecodable"),  # (the REST API reads strings as timecodes)
    pytest.param({"source": {"type": "ftp", "url": "ftp://x/a.mp4"}}, "unknown_source_type", id="unknown-type"),
    pytest.param({"metadata": {"k": "x" * 5000}}, "invalid_field", id="metadata-too-large"),
    pytest.param({"metadata": ["not", "an", "object"]}, "invalid_field", id="metadata-not-an-object"),
    pytest.param({"subs": {"enabled": True, "translate": "fr"}}, "translate_unsupported", id="translate-not-en"),
    pytest.param({"subs": {"translate": "en"}}, "translate_needs_subtitles", id="translate-without-subtitles"),
    pytest.param({"subs": {"enabled": True, "lang": "tlh"}}, "language_unknown", id="unknown-lang"),
]


async def _ended_row(res: Resources, job_id: str) -> Any:
    async with asyncio.timeout(JOB_TIMEOUT_SEC):
        while True:
            row = await jobs.get_job(res.db, uuid.UUID(job_id))
            if row is not None and row["status"] in ("done", "failed"):
                return row
            await asyncio.sleep(POLL_SEC)


async def _end_event_read_later(res: Resources, job_id: str) -> JobEvent:
    """The job's end event, through a durable consumer created now (after the job ended)."""
    stream, durable = bus.events_stream(res.settings), f"publisher-{secrets.token_hex(4)}"
    await res.js.add_consumer(stream, ConsumerConfig(
        durable_name=durable, filter_subject=res.subjects.events(job_id), deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
    ))
    sub = await res.js.pull_subscribe_bind(durable=durable, stream=stream)
    [msg] = await sub.fetch(1, timeout=EVENT_WAIT_SEC)
    await msg.ack()
    return msgspec.json.decode(msg.data, type=JobEvent)


@pytest.mark.settings(max_clip_seconds=MAX_CLIP_SEC)
@pytest.mark.parametrize(("change", "code"), REFUSED)
async def test_direct_message_gets_the_gateways_code_a_failed_row_and_a_durable_end_event(
    client: AsyncTestClient[Any], resources: Resources, workers: Workers, sample_video: Path,
    change: dict[str, Any], code: str,
) -> None:
    body = {"source": URL_SOURCE, "startSec": 1, "endSec": 4, **change}
    if key := body["source"].get("key"):  # the object it names exists (a result, a staged source): still refused
        # (a `..` key is planted where it leads: SeaweedFS refuses `..` in an object key)
        await resources.storage.put_file(posixpath.normpath(key), sample_video, "video/mp4", {})
    answer = await client.post("/api/jobs", json=body)
    assert (answer.status_code, answer.json()["error"]["code"]) == (422, code), answer.text

    workers.start(ENTRY_STAGE)
    job_id = str(uuid7())
    await bus.publish(resources.js, resources.subjects.stage(ENTRY_STAGE, "normal"),
                      json.dumps({"id": job_id, **body}).encode(), bus.msg_id(job_id, ENTRY_STAGE))
    row = await _ended_row(resources, job_id)
    assert (row["status"], row["error_code"]) == ("failed", code), row["error_message"]
    failed = [e for e in await jobs.job_events(resources.db, uuid.UUID(job_id)) if e["type"] == "failed"]
    assert [e["data"]["code"] for e in failed] == [code]
    view = await client.get(f"/api/jobs/{job_id}")
    assert (view.status_code, view.json()["errorCode"]) == (200, code), view.text

    event = await _end_event_read_later(resources, job_id)
    assert (event.job_id, event.status, event.error_code) == (job_id, "failed", code)


async def test_message_without_a_usable_id_is_dropped_without_a_row(resources: Resources, workers: Workers) -> None:
    workers.start(ENTRY_STAGE)
    subject = resources.subjects.stage(ENTRY_STAGE, "normal")
    for payload in (b"not json", b'{"id": "not-a-uuid", "startSec": -1}'):
        await bus.publish(resources.js, subject, payload, secrets.token_hex(8))
    info = await resources.js.consumer_info(resources.settings.nats_stream, bus.consumer_name(ENTRY_STAGE, "normal"))
    async with asyncio.timeout(JOB_TIMEOUT_SEC):
        while info.num_pending + info.num_ack_pending:  # both taken and terminated, not redelivered
            await asyncio.sleep(POLL_SEC)
            info = await resources.js.consumer_info(resources.settings.nats_stream, info.name)
    assert await resources.db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_direct_job_done_end_event_is_kept(resources: Resources, workers: Workers, sample_video: Path) -> None:
    key = f"uploads/{uuid7()}/sample.mp4"
    await resources.storage.put_file(key, sample_video, "video/mp4", {})
    workers.start()
    job_id = str(uuid7())
    message = {"id": job_id, "source": {"type": "upload", "key": key}, "startSec": 2, "endSec": 4}
    await bus.publish(resources.js, resources.subjects.stage(ENTRY_STAGE, "fast"), json.dumps(message).encode(),
                      bus.msg_id(job_id, ENTRY_STAGE))
    row = await _ended_row(resources, job_id)
    assert row["status"] == "done", row["error_message"]
    event = await _end_event_read_later(resources, job_id)
    assert (event.status, event.error_code) == ("done", None)
    assert event.result is not None and event.result.actual_end_sec == pytest.approx(4, abs=0.05)


async def test_a_retried_end_event_is_kept_once(resources: Resources) -> None:
    job_id = str(uuid7())
    event = JobEvent(job_id=job_id, status="failed", error_code="internal_error")
    seen = asyncio.Event()

    async def keep(_: Any) -> None:
        seen.set()

    await resources.nc.subscribe(resources.subjects.events(job_id), cb=keep)
    for _ in range(2):
        await bus.publish_job_end(resources.js, resources.subjects, event)
    info = await resources.js.stream_info(bus.events_stream(resources.settings), subjects_filter=">")
    assert info.state.subjects == {resources.subjects.events(job_id): 1}
    await asyncio.wait_for(seen.wait(), EVENT_WAIT_SEC)  # core subscribers see JetStream publishes too


async def test_failing_an_unknown_job_writes_its_row_only_for_a_refused_message(resources: Resources) -> None:
    plain, refused = str(uuid7()), str(uuid7())
    await finish_job_failed(resources, plain, Permanent("x", code="internal_error"))
    await finish_job_failed(resources, refused, Permanent("x", code="invalid_field"), refused=b'{"priority": "bulk"}')
    assert await jobs.get_job(resources.db, uuid.UUID(plain)) is None
    row = await jobs.get_job(resources.db, uuid.UUID(refused))
    assert (row["status"], row["priority"], row["error_code"]) == ("failed", "bulk", "invalid_field")


@pytest.mark.parametrize("key", [
    "results/a.mp4", "staging/x/source.mp4", "uploads/", "/uploads/a.mp4", "uploads//a.mp4", "uploads/a/../b.mp4",
    "uploads/./a.mp4", "uploads/a b.mp4", "uploads/a\nb.mp4", "uploads/a\\b.mp4", "UPLOADS/a.mp4",
    "uploads/" + "a" * 1100,
])
def test_upload_keys_outside_uploads_or_malformed_are_refused(key: str) -> None:
    with pytest.raises(Permanent) as refused:
        check_upload_key(key)
    assert refused.value.code == "upload_not_found"


def test_upload_slot_keys_pass() -> None:
    for name in ("talk.mp4", "my talk (final).MP4", "..", "", "é🎬.mov", "a" * 300):
        check_upload_key(upload_key(name))
    check_upload_key("uploads/batch-7/cam_1.v2.mov")  # other systems' keys under uploads/ in the same plain form
