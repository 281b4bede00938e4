"""Webhooks against a real HTTP receiver on loopback: retried through JetStream until the receiver accepts (same
event id, a valid signature each try), a restart of the notifier mid-retry loses nothing, a receiver that never
accepts ends `gave_up`, private addresses are refused at submit and at delivery, a slow receiver is cut off."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app
from services.notifier.run import run_notifier
from services.notifier.slots import Slots, receiver_of
from shared.db import keys
from shared.jobs.apikeys import new_key
from shared.net.webhook_sign import EVENT_ID_HEADER, SIGNATURE_HEADER, new_secret, verify
from shared.runtime.resources import Resources
from shared.settings import Settings, settings_env
from tests.conftest import ROOMY_QUOTAS, Workers
from tests.http_source import MediaServer

REPO = Path(__file__).resolve().parent.parent
WAIT_SEC = 30.0  # longest wait for one expected outcome
PROCESS_WAIT_SEC = 90.0  # the same when a notifier process must start first (the import takes seconds under load)
POLL_SEC = 0.05
QUIET_SEC = 1.5  # after the last expected try, how long nothing more may arrive
REFUSED_AT_SUBMIT = [  # (webhook, the 422's code)
    ("http://127.0.0.1:8080/hook", "webhook_refused"), ("http://10.1.2.3/hook", "webhook_refused"),
    ("http://169.254.169.254/latest", "webhook_refused"), ("http://[::1]/hook", "webhook_refused"),
    ("ftp://example.com/x", "webhook_invalid"), ("not a url", "webhook_invalid"),
    ("http://user@example.com/x", "webhook_invalid"),
]
FAST_RETRIES = {"webhook_retry_base_sec": 0.2, "webhook_retry_max_sec": 0.5}


def readme_receiver() -> Callable[[str, bytes, str], bool]:
    """The README's receiver check (the Python block after `<!-- webhook-receiver -->`), run as written: the
    signatures must verify the way a user's receiver verifies them, not only with clipjet's own code."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- webhook-receiver -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), scope)
    return scope["verified"]  # type: ignore[no-any-return]


@dataclasses.dataclass
class Hit:
    body: bytes
    headers: dict[str, str]
    at: float


class Receiver:
    """An aiohttp server on loopback that answers `statuses` in turn (then the last one), after `delay_sec`."""

    def __init__(self, statuses: list[int], delay_sec: float = 0.0) -> None:
        self.statuses, self.delay_sec = statuses, delay_sec
        self.hits: list[Hit] = []
        self.url = ""
        self.open = self.most_open = 0  # requests being answered now, and the most at once

    async def _hook(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(await request.read(), dict(request.headers), time.monotonic()))
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.sleep(self.delay_sec)
        finally:
            self.open -= 1
        status = self.statuses[min(len(self.hits) - 1, len(self.statuses) - 1)]
        return web.Response(status=status, text="ok" if status < 300 else "not now")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        try:
            yield self
        finally:
            await runner.cleanup()


@asynccontextmanager
async def gateway(settings: Settings, res: Resources, **key: Any) -> AsyncIterator[tuple[AsyncTestClient[Any], str]]:
    """A gateway client with a key of its own; the key's webhook signing secret."""
    made, secret = new_key(), new_secret()
    await keys.insert_key(res.db, made, "hooks", admin=False, priorities=("normal",), quotas=ROOMY_QUOTAS,
                          webhook_secret=secret, **key)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {made.token}"
        yield client, secret


@asynccontextmanager
async def notifier(res: Resources) -> AsyncIterator[None]:
    """The notifier running in this event loop; stopped (gracefully, bounded) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(res, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_SEC)


async def ended_job(client: AsyncTestClient[Any], **fields: Any) -> str:
    """A job with these extra fields, canceled at once (no worker runs): its end event is published."""
    body = {"source": {"type": "url", "url": "http://127.0.0.1:9/never.mp4"}, "startSec": 0, "endSec": 2, **fields}
    made = await client.post("/api/jobs", json=body)
    assert made.status_code == 202, made.text
    job_id = made.json()["id"]
    canceled = await client.post(f"/api/jobs/{job_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    return str(job_id)


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_SEC) -> Any:
    """`check()`'s first truthy result, polled (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(POLL_SEC)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def webhook_state(client: AsyncTestClient[Any], job_id: str, status: str) -> dict[str, Any] | None:
    view = (await client.get(f"/api/jobs/{job_id}")).json()
    return view if view["webhook"] and view["webhook"]["status"] == status else None


async def hits_at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.hits) >= n


@pytest.mark.settings(webhook_max_attempts=5, **FAST_RETRIES)
async def test_receiver_failing_twice_gets_the_third_try_signed_with_one_event_id(
    settings: Settings, resources: Resources,
) -> None:
    async with Receiver([500, 503, 200]).running() as receiver, gateway(settings, resources) as (client, secret):
        job_id = await ended_job(client, webhook=receiver.url)
        async with notifier(resources):
            view = await wait_until(lambda: webhook_state(client, job_id, "delivered"), "the third try to land")
            await asyncio.sleep(QUIET_SEC)
        assert len(receiver.hits) == 3
        assert view["webhook"]["attempts"] == 3 and view["webhook"]["lastStatusCode"] == 200
        assert view["webhook"]["url"] == receiver.url and view["webhook"]["lastAttemptAt"]
        assert {hit.headers[EVENT_ID_HEADER] for hit in receiver.hits} == {f"{job_id}:canceled"}
        verified = readme_receiver()
        for hit in receiver.hits:
            header = hit.headers[SIGNATURE_HEADER]
            assert verified(secret, hit.body, header) and verify(secret, hit.body, header), hit.headers
            assert not verified(new_secret(), hit.body, header)
            assert not verified(secret, hit.body + b" ", header)
            sent = json.loads(hit.body)
            assert sent["id"] == job_id and sent["status"] == "canceled"
            assert hit.headers["Content-Type"] == "application/json"
        assert receiver.hits[1].at - receiver.hits[0].at >= 0.05  # retried after a delay, not at once


@pytest.mark.settings(webhook_max_attempts=3, **FAST_RETRIES)
async def test_a_receiver_that_never_accepts_ends_gave_up_after_the_last_try(
    settings: Settings, resources: Resources,
) -> None:
    async with Receiver([500]).running() as receiver, gateway(settings, resources) as (client, _):
        job_id = await ended_job(client, webhook=receiver.url)
        async with notifier(resources):
            view = await wait_until(lambda: webhook_state(client, job_id, "gave_up"), "the webhook to be given up")
            await asyncio.sleep(QUIET_SEC)
        assert len(receiver.hits) == 3
        assert view["webhook"]["attempts"] == 3 and view["webhook"]["lastStatusCode"] == 500
        assert "500" in view["webhook"]["lastError"]


def _spawn_notifier(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "services", "notifier"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_SEC)


@pytest.mark.settings(webhook_max_attempts=5, webhook_retry_base_sec=4.0, webhook_retry_max_sec=4.0)
async def test_killing_the_notifier_mid_retry_loses_nothing(settings: Settings, resources: Resources) -> None:
    """The first try fails; the notifier process is killed (SIGKILL) while the retry waits in JetStream; a new
    process makes the second and third tries."""
    async with Receiver([500, 500, 200]).running() as receiver, gateway(settings, resources) as (client, secret):
        job_id = await ended_job(client, webhook=receiver.url)
        first = _spawn_notifier(settings)
        try:
            await wait_until(lambda: webhook_state(client, job_id, "failing"), "the first try to fail",
                             PROCESS_WAIT_SEC)
            await asyncio.sleep(0.5)  # its nak (with the retry's delay) reaches JetStream
        finally:
            _kill(first)
        assert len(receiver.hits) == 1
        second = _spawn_notifier(settings)
        try:
            view = await wait_until(lambda: webhook_state(client, job_id, "delivered"), "the retries after the kill",
                                    PROCESS_WAIT_SEC)
        finally:
            _kill(second)
        assert view["webhook"]["attempts"] == 3 and len(receiver.hits) == 3
        assert {hit.headers[EVENT_ID_HEADER] for hit in receiver.hits} == {f"{job_id}:canceled"}
        assert all(readme_receiver()(secret, hit.body, hit.headers[SIGNATURE_HEADER]) for hit in receiver.hits)


@pytest.mark.settings(fetch_allow_private=False)
async def test_private_and_malformed_webhooks_are_refused_at_submit(settings: Settings, resources: Resources) -> None:
    body = {"source": {"type": "url", "url": "https://example.com/a.mp4"}, "startSec": 0, "endSec": 2}
    async with gateway(settings, resources) as (client, _):
        for url, code in REFUSED_AT_SUBMIT:
            answer = await client.post("/api/jobs", json={**body, "webhook": url})
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["error"]["code"] == code, (url, answer.text)
            assert answer.json()["error"]["field"] == "webhook"
        listed = (await client.get("/api/jobs")).json()
        assert listed["jobs"] == []  # nothing was written


@pytest.mark.settings(webhook_max_attempts=5, **FAST_RETRIES)
async def test_a_private_receiver_is_refused_at_delivery_when_private_addresses_are_not_allowed(
    settings: Settings, resources: Resources,
) -> None:
    """The gateway allowed it (FETCH_ALLOW_PRIVATE there), the notifier does not: refused at once, never
    contacted, given up after one try (the guard would refuse every retry too)."""
    async with Receiver([200]).running() as receiver, gateway(settings, resources) as (client, _):
        job_id = await ended_job(client, webhook=receiver.url)
        strict = dataclasses.replace(resources, settings=msgspec.structs.replace(settings, fetch_allow_private=False))
        async with notifier(strict):
            view = await wait_until(lambda: webhook_state(client, job_id, "gave_up"), "the refusal")
            await asyncio.sleep(QUIET_SEC)
        assert receiver.hits == []
        assert view["webhook"]["attempts"] == 1 and view["webhook"]["lastStatusCode"] is None
        assert "refused" in view["webhook"]["lastError"] and "127.0.0.1" in view["webhook"]["lastError"]


@pytest.mark.settings(webhook_max_attempts=2, webhook_timeout_sec=1.0, **FAST_RETRIES)
async def test_a_slow_receiver_is_cut_off_by_the_timeout(settings: Settings, resources: Resources) -> None:
    async with Receiver([200], delay_sec=20.0).running() as receiver, gateway(settings, resources) as (client, _):
        job_id = await ended_job(client, webhook=receiver.url)
        started = time.monotonic()
        async with notifier(resources):
            view = await wait_until(lambda: webhook_state(client, job_id, "gave_up"), "both tries to time out")
        took = time.monotonic() - started
        assert len(receiver.hits) == 2
        assert took < 2 * settings.webhook_timeout_sec + 5.0, took  # never the receiver's 20 s
        assert view["webhook"]["lastStatusCode"] is None and "no answer within 1 s" in view["webhook"]["lastError"]


async def test_a_keys_default_webhook_applies_to_its_jobs_that_name_none(
    settings: Settings, resources: Resources,
) -> None:
    async with Receiver([200]).running() as receiver, gateway(settings, resources, default_webhook=receiver.url) as (
        client, _
    ):
        job_id = await ended_job(client)
        own = await ended_job(client, webhook=receiver.url + "?own=1")
        view = (await client.get(f"/api/jobs/{job_id}")).json()
        assert view["webhook"] == {"url": receiver.url, "status": "pending", "attempts": 0, "lastStatusCode": None,
                                   "lastError": None, "lastAttemptAt": None}
        assert (await client.get(f"/api/jobs/{own}")).json()["webhook"]["url"] == receiver.url + "?own=1"


async def test_jobs_without_a_webhook_show_none_and_are_acked(settings: Settings, resources: Resources) -> None:
    async with gateway(settings, resources) as (client, _):
        job_id = await ended_job(client)
        async with notifier(resources):
            async def acked() -> bool:
                info = await resources.js.consumer_info(f"{settings.nats_stream}_EVENTS", "notifier")
                return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.consumer_seq >= 1

            await wait_until(acked, "the notifier to ack the event")
        assert (await client.get(f"/api/jobs/{job_id}")).json()["webhook"] is None


@pytest.mark.settings(webhook_max_attempts=3, **FAST_RETRIES)
async def test_done_and_failed_jobs_post_their_final_view(
    settings: Settings, resources: Resources, workers: Workers, sample_video: Path,
) -> None:
    """Through the real stages: a clip that is made posts its `done` view with a signed URL of the clip, one whose
    source answers 404 posts its `failed` view with the error code."""
    workers.start("fetch", "trim", "upload")
    async with Receiver([200]).running() as receiver, gateway(settings, resources) as (client, secret), \
            notifier(resources):
        with MediaServer(sample_video.parent) as origin:
            ids = {}
            for name in (sample_video.name, "gone.mp4"):
                made = await client.post("/api/jobs", json={
                    "source": {"type": "url", "url": origin.url(name)}, "startSec": 1, "endSec": 3,
                    "webhook": receiver.url,
                })
                assert made.status_code == 202, made.text
                ids[name] = made.json()["id"]
            for job_id in ids.values():
                await wait_until(lambda j=job_id: webhook_state(client, j, "delivered"), "the end's webhook", 90.0)
        posted = {json.loads(hit.body)["id"]: (json.loads(hit.body), hit) for hit in receiver.hits}
        assert set(posted) == set(ids.values()) and len(receiver.hits) == 2
        done, done_hit = posted[ids[sample_video.name]]
        assert done["status"] == "done" and done["urls"]["video"].startswith("http") and done["result"]["durationSec"]
        assert done_hit.headers[EVENT_ID_HEADER] == f"{done['id']}:done"
        failed, failed_hit = posted[ids["gone.mp4"]]
        assert failed["status"] == "failed" and failed["errorCode"] == "source_unreadable"
        assert failed_hit.headers[EVENT_ID_HEADER] == f"{failed['id']}:failed"
        verified = readme_receiver()
        assert all(verified(secret, hit.body, hit.headers[SIGNATURE_HEADER]) for hit in receiver.hits)


async def test_a_batch_names_one_webhook_for_its_jobs_checked_like_a_jobs(
    settings: Settings, resources: Resources,
) -> None:
    source = {"type": "url", "url": "https://example.com/a.mp4"}
    clips = [{"startSec": 0, "endSec": 2}, {"startSec": 4, "endSec": 6}]
    async with gateway(settings, resources) as (client, _), Receiver([200]).running() as receiver:
        refused = await client.post("/api/jobs", json={"source": source, "clips": clips, "webhook": "ftp://x/y"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "webhook_invalid", refused.text
        assert (await client.get("/api/jobs")).json()["jobs"] == []  # nothing was written
        made = await client.post("/api/jobs", json={"source": source, "clips": clips, "webhook": receiver.url})
        assert made.status_code == 202, made.text
        for job in made.json()["jobs"]:
            view = (await client.get(f"/api/jobs/{job['id']}")).json()
            assert view["webhook"]["url"] == receiver.url and view["webhook"]["status"] == "pending", view


@pytest.mark.settings(fetch_allow_private=False, fetch_allow_networks="127.0.0.0/8")
async def test_a_refused_key_default_says_so_and_a_job_may_name_its_own(
    settings: Settings, resources: Resources,
) -> None:
    """A key whose stored default webhook the guard refuses (set before the check, or the policy changed): its
    jobs that name none get a 422 that names the key's default and the command that changes it; a job that names
    an allowed webhook of its own still goes through, and a refused own webhook is not blamed on the key."""
    body = {"source": {"type": "url", "url": "https://example.com/a.mp4"}, "startSec": 0, "endSec": 2}
    async with gateway(settings, resources, default_webhook="http://10.1.2.3/hook") as (client, _):
        refused = await client.post("/api/jobs", json=body)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "webhook_refused" and error["field"] == "webhook", error
        assert "default webhook" in error["message"] and "clipjet keys webhook" in error["message"], error
        assert "10.1.2.3" in error["message"], error
        own_refused = await client.post("/api/jobs", json={**body, "webhook": "http://10.9.9.9/hook"})
        assert own_refused.status_code == 422 and own_refused.json()["error"]["code"] == "webhook_refused"
        assert "default" not in own_refused.json()["error"]["message"], own_refused.text
        own = await client.post("/api/jobs", json={**body, "webhook": "http://127.0.0.1:9/hook"})
        assert own.status_code == 202, own.text


@pytest.mark.settings(webhook_max_attempts=1, webhook_timeout_sec=4.0, webhook_concurrency=4,
                      webhook_per_receiver_concurrency=2, webhook_busy_retry_sec=0.5)
async def test_a_black_hole_receiver_flooded_by_one_key_does_not_hold_up_another_keys_webhook(
    settings: Settings, resources: Resources,
) -> None:
    """Key A's 12 jobs name a receiver that never answers (each try holds a slot for WEBHOOK_TIMEOUT_SEC), key B's
    one job, published after them, names a healthy one. Without per-receiver shares the notifier's 4 slots go to
    A's tries, 4 at a time, and B waits 12 s; with them A holds at most 2 and B lands within a try's timeout.
    Events handed back for want of a slot are not counted as tries."""
    flood = 12
    async with Receiver([200], delay_sec=60.0).running() as hole, Receiver([200]).running() as healthy, \
            gateway(settings, resources) as (a, _), gateway(settings, resources) as (b, _):
        a_jobs = [await ended_job(a, webhook=hole.url) for _ in range(flood)]
        b_job = await ended_job(b, webhook=healthy.url)
        started = time.monotonic()
        async with notifier(resources):
            await wait_until(lambda: webhook_state(b, b_job, "delivered"), "key B's webhook", 3 * flood)
            took = time.monotonic() - started
            await wait_until(lambda: hits_at_least(hole, 2), "key A's first tries")
            views = [(await a.get(f"/api/jobs/{job_id}")).json()["webhook"] for job_id in a_jobs]
        assert took < settings.webhook_timeout_sec, f"key B's webhook took {took:.1f} s"
        assert hole.most_open <= settings.webhook_per_receiver_concurrency, hole.most_open
        assert all(view["attempts"] <= 1 for view in views), views  # a hand-back for want of a slot is no try
        assert sum(view["attempts"] for view in views) <= len(hole.hits), (views, len(hole.hits))  # tries reached it


def test_slots_bound_each_receiver_and_each_key() -> None:
    slots = Slots(per_receiver=2, per_key=3)
    one, two = receiver_of("https://Hooks.Example.com/a?x=1"), receiver_of("https://hooks.example.com:8443/b")
    assert one == receiver_of("https://hooks.example.com/other") and one != two
    assert slots.take(one, "a") and slots.take(one, "b") and not slots.take(one, "c")  # the receiver is full
    assert slots.take(two, "a") and slots.take(two, "a") and not slots.take(receiver_of("http://x/"), "a")  # key
    slots.give_back(one, "a")
    assert slots.take(one, "a") and not slots.take(one, "c")


@pytest.mark.settings(webhook_max_attempts=5, webhook_retry_base_sec=60.0, webhook_retry_max_sec=60.0,
                      webhook_max_pending=3)
async def test_one_keys_waiting_retries_do_not_use_up_the_ack_pending_room_of_new_events(
    settings: Settings, resources: Resources,
) -> None:
    """Key A's 5 webhooks fail their first try and wait a minute for the next; with room for 3 events handed out and
    not acked (WEBHOOK_MAX_PENDING), key B's new event must still be tried at once: waiting retries are held in the
    retries stream, not as ack-pending on the end events' consumer."""
    flood = 5
    async with Receiver([500]).running() as failing, Receiver([200]).running() as healthy, \
            gateway(settings, resources) as (a, _), gateway(settings, resources) as (b, _):
        a_jobs = [await ended_job(a, webhook=failing.url) for _ in range(flood)]
        async with notifier(resources):
            for job_id in a_jobs:
                await wait_until(lambda j=job_id: webhook_state(a, j, "failing"), "key A's first tries")
            b_job = await ended_job(b, webhook=healthy.url)
            started = time.monotonic()
            await wait_until(lambda: webhook_state(b, b_job, "delivered"), "key B's webhook")
            took = time.monotonic() - started
        assert took < 10.0, f"key B's webhook took {took:.1f} s"
        assert len(failing.hits) == flood  # A's retries wait their minute
