"""Nothing secret reaches a client: signed URLs, credentials and internal keys are scrubbed from every
user-visible text (the API's error message, job events, logs)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from shared.db import jobs
from shared.jobs.contracts import Artifact, ClipJobMessage, MediaPlan, StageMessage, StreamFacts, UploadSource
from shared.jobs.ids import uuid7
from shared.jobs.pipeline import ENCODE, FETCH, UPLOAD
from shared.runtime import bus
from shared.runtime.resources import Resources
from shared.runtime.scrub import INTERNAL_KEY, REDACTED, scrub, scrub_value
from shared.settings import Settings
from tests.conftest import wait_for_job
from tests.test_delivery import fetch_worker_processes

WAIT_SEC = 60.0
REPO = Path(__file__).resolve().parent.parent
SIGNED = (
    "http://127.0.0.1:8333/clipjet/uploads/u1/a.mkv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=clipjet%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261201T203557Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef"
)
LEAKS = ("X-Amz-Signature", "X-Amz-Credential", "aws4_request", "0123456789abcdef")


def test_signed_urls_credentials_and_keys_are_replaced() -> None:
    text = (
        f"Error opening input file {SIGNED}.\n"
        "Authorization: AWS4-HMAC-SHA256 Credential=clipjet/20261201/us-east-1/s3/aws4_request, Signature=ff\n"
        "got Bearer eyJhbGciOi.abc.def from https://user:hunter22@example.com/v.mp4?token=abc#t=3 "
        "and staging/01a2/source.mkv, results/ab/cd.mp4; X-Amz-Signature=deadbeef alone"
    )
    out = scrub(text, secrets=("hunter22",))
    for leak in (*LEAKS, "deadbeef", "eyJhbGciOi", "hunter22", "token=abc", "user:", "staging/", "results/"):
        assert leak not in out, (leak, out)
    assert "http://127.0.0.1:8333/clipjet/uploads/u1/a.mkv?" + REDACTED in out  # what failed stays readable
    assert INTERNAL_KEY in out and "Error opening input file" in out
    assert scrub(out) == out  # scrubbing twice (the database, then the gateway) changes nothing more


def test_text_with_nothing_to_hide_is_kept_and_other_cases_are_still_caught() -> None:
    plain = ("0193a3c2-0000-7000-8000-000000000000", "POST /api/jobs 202", "uploads/k1/a.mp4", "caf\u00e9 42")
    assert [scrub(text) for text in plain] == list(plain)  # untouched (the patterns' fast path)
    # the patterns ignore case beyond ASCII too (a dotless i still spells "authorization" for them)
    assert scrub("Proxy-Authorizat\u0131on: Basic dXNlcjpodW50ZXIy") == f"Proxy-Authorizat\u0131on: {REDACTED}"
    assert scrub("BEARER abc.def") == f"BEARER {REDACTED}"


def test_nested_values_and_secret_named_fields() -> None:
    data = {"message": SIGNED, "attempt": 2, "detail": [{"url": SIGNED}], "password": "pw", "Token": "t"}
    out = scrub_value(data)
    assert out["attempt"] == 2 and out["password"] == out["Token"] == REDACTED
    assert not any(leak in msgspec.json.encode(out).decode() for leak in LEAKS)


def junk_encode_message(job_id: str, key: str, size: int) -> StageMessage:
    """An encode message (as a system publishing straight to NATS sends it) whose staged source is not media:
    the plan says a stream copy, so ffmpeg itself opens the signed URL and fails."""
    job = ClipJobMessage(id=job_id, source=UploadSource(key=key), start_sec=1.0, end_sec=2.0)
    plan = MediaPlan(duration_sec=10.0, container="matroska", cut_start_sec=1.0,
                     streams=[StreamFacts(index=0, kind="video", codec="h264")])
    source = Artifact(stage=FETCH, role="source", key=key, size=size)
    return StageMessage(job=job, route=[ENCODE, UPLOAD], done=[FETCH], plan=plan, artifacts=[source])


async def test_failed_job_shows_no_signed_url(
    settings: Settings, resources: Resources, client: AsyncTestClient[Any], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(b"\x1a\x45\xdf\xa3 not really matroska " * 200)
    key = f"uploads/{uuid7()}/junk.mkv"
    await resources.storage.put_file(key, junk, "video/x-matroska", {})
    job_id = str(uuid7())
    message = junk_encode_message(job_id, key, junk.stat().st_size)
    with fetch_worker_processes(settings, tmp_path, stage=ENCODE) as start:
        worker = start("encoder")
        await bus.publish(resources.js, resources.subjects.stage(ENCODE, "normal"),
                          msgspec.json.encode(message), bus.msg_id(job_id, ENCODE))
        job = await wait_for_job(client, job_id, WAIT_SEC, may_be_unknown=True)
        await asyncio.sleep(0.5)  # the worker's last log lines
    assert worker.pid
    assert (job["status"], job["errorCode"]) == ("failed", "media_error"), job
    assert "junk.mkv" in job["errorMessage"]  # the message still says which input failed
    events = msgspec.json.encode(
        [dict(e) for e in await jobs.job_events(resources.db, uuid.UUID(job_id))], enc_hook=str
    ).decode()
    row = await jobs.get_job(resources.db, uuid.UUID(job_id))
    assert row is not None
    log = (tmp_path / "encoder.log").read_text()
    assert "stage_message" in log and job_id in log  # the log did capture the job
    for leak in (*LEAKS, settings.s3_secret_key):
        for name, text in (("api", job["errorMessage"]), ("row", row["error_message"]), ("events", events),
                           ("log", log)):
            assert leak not in text, (name, leak, text[-3000:])


def test_log_lines_are_scrubbed_structlog_and_stdlib() -> None:
    """A process that configured logging (`clipjet …`): its structlog and standard-library lines, tracebacks
    included, show no signature."""
    code = (
        "import logging; from shared.runtime.logs import configure_logging, get_logger; configure_logging(json=True); "
        "logging.basicConfig(); "
        f"get_logger('t').warning('ffmpeg_failed', error={SIGNED!r}, detail={{'url': {SIGNED!r}}}); "
        f"logging.getLogger('uvicorn').warning('GET %s', {SIGNED!r})\n"
        f"try:\n    raise OSError({SIGNED!r})\nexcept OSError:\n    logging.getLogger('x').exception('boom')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=WAIT_SEC)
    assert done.returncode == 0, done.stderr
    assert "ffmpeg_failed" in done.stderr and "GET" in done.stderr and "OSError" in done.stderr
    assert not any(leak in done.stderr for leak in LEAKS), done.stderr
