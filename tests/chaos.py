"""The chaos harness: worker processes, a load of distinct clip jobs, and the figures a scenario is judged by.

Every scenario runs the same job specs against servers the test itself started; a fault-free run of the same
specs gives the bytes every clip must have. Figures: jobs, faults, lost (accepted but never ended, or gone),
stuck (not ended by the deadline), failed, duplicated (a second `done` event, or a result object the fault-free
run did not make), mismatched (a clip whose bytes differ from the fault-free run), p95 delay (POST → done).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from services.registry import STAGES
from shared.jobs.contracts import PRIORITIES
from shared.runtime import bus
from shared.settings import Settings, settings_env
from shared.storage.s3 import Storage

REPO = Path(__file__).resolve().parent.parent
CHAOS_JOBS = 30  # jobs in every scenario's load
REENCODED_INDEX = 22  # this spec's clip, [7.5, 7.9] s, holds no keyframe: it is re-encoded by the encoder
BETWEEN_KEYFRAMES_SEC = 0.4
LOAD_DEADLINE_SEC = 150.0  # longest a load may take to end, faults included
SUBMIT_RETRY_SEC = 0.25  # pause before a POST is sent again (same Idempotency-Key) after a 503 without a job id
POLL_SEC = 0.1
STOP_WAIT_SEC = 15.0
REPORT_ENV = "CLIPJET_CHAOS_REPORT"  # append each scenario's figures (JSON lines) to this file when set
TERMINAL = ("done", "failed", "expired")
CHAOS_TIMING: dict[str, Any] = {
    "queue_visibility_sec": 3.0, "heartbeat_ms": 200, "retry_base_delay_sec": 0.2, "shutdown_grace_sec": 2.0,
    "reaper_interval_sec": 1.0, "outbox_grace_sec": 2.0, "breaker_open_sec": 1.0, "log_level": "info",
}
JOB_ROWS = """
SELECT j.id::text AS id, j.status, j.error_code, j.result, j.result_video_key, j.created_at,
       (SELECT min(e.ts) FROM job_events e WHERE e.job_id = j.id AND e.type = 'done') AS done_at,
       (SELECT count(*) FROM job_events e WHERE e.job_id = j.id AND e.type = 'done') AS done_events
FROM jobs j WHERE j.id = ANY($1::uuid[])
"""


@dataclass(frozen=True)
class JobSpec:
    """One job of the load: a distinct range, so no two share a request fingerprint."""

    start_sec: float
    end_sec: float
    priority: str
    precision: str = "auto"
    subs: bool = False
    preview: bool = False  # a poster and thumbnails (the thumbs stage)

    def body(self, url: str) -> dict[str, Any]:
        return {
            "source": {"type": "url", "url": url}, "startSec": self.start_sec, "endSec": self.end_sec,
            "priority": self.priority, "precision": self.precision,
            "subs": {"enabled": self.subs, "burnIn": False, "lang": "auto"},
            **({"poster": {}, "thumbnails": {}} if self.preview else {}),
        }


def load_specs(count: int = CHAOS_JOBS) -> list[JobSpec]:
    """`count` distinct clips of the 20 s sample (a keyframe every 2 s); a few ask for frame precision,
    subtitles or a poster and thumbnails, and one is a short frame-precise clip between two keyframes (nothing to
    join a copy at, so the encoder re-encodes it): the load passes every stage (transcribe, thumbs, encode)."""
    specs = []
    for i in range(count):
        start = (i % 15) * 1.0 + (0.5 if i >= 15 else 0.0)
        end = start + BETWEEN_KEYFRAMES_SEC if i == REENCODED_INDEX else start + 2.0 + (i % 3)
        specs.append(JobSpec(
            start_sec=start, end_sec=end, priority=PRIORITIES[i % len(PRIORITIES)],
            precision="frame" if i % 15 == 7 else "auto", subs=i % 15 == 11, preview=i % 15 == 3,
        ))
    return specs


class Fleet:
    """`clipjet` service processes (a worker per stage, the reaper), each logging to <folder>/<name>-<n>.log."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.folder = folder
        self.env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}  # the current process's log per name
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> None:
        log_path = self.folder / f"{name}-{sum(1 for p in self._started if p.args[3:] == list(argv))}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "services", *argv], cwd=REPO, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.logs[name] = log_path
        self._started.append(proc)

    def start_worker(self, stage: str) -> None:
        self.start(stage, "worker", stage)

    def start_workers(self) -> None:
        """A worker per stage: one more worker "node" when this fleet has a SCRATCH_DIR of its own."""
        for stage in STAGES:
            self.start_worker(stage)

    def start_all(self) -> None:
        self.start_workers()
        self.start("reaper", "reaper")

    def stage_messages_done(self) -> int:
        """Stage messages this fleet's workers (every process it started) handled to the end (`outcome` ok)."""
        done = 0
        for path in self.folder.glob("*.log"):
            for line in path.read_text().splitlines():
                with suppress(ValueError):
                    entry = json.loads(line)
                    done += isinstance(entry, dict) and entry.get("event") == "stage_message" \
                        and entry.get("outcome") == "ok"
        return done

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful stop, its messages come back only after ack_wait."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=STOP_WAIT_SEC)

    async def wait_started(self, timeout_sec: float = LOAD_DEADLINE_SEC) -> None:
        """Wait (bounded) until every current process logged that it started (`worker_started`, `reaper_started`):
        a fault is meant for running services, not for ones still starting (see RELIABILITY.md, limits)."""
        async with asyncio.timeout(timeout_sec):
            while not all(map(_logged_start, self.logs.values())):  # noqa: ASYNC110 - log files
                await asyncio.sleep(POLL_SEC)

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._started:
            try:
                proc.wait(timeout=STOP_WAIT_SEC)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_WAIT_SEC)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(self.folder.glob("*.log")))


def _logged_start(log_path: Path) -> bool:
    text = log_path.read_text() if log_path.exists() else ""
    return '"worker_started"' in text or '"reaper_started"' in text


async def submit(
    client: AsyncTestClient[Any], specs: list[JobSpec], url: str, tag: str, ids: list[str] | None = None
) -> list[str]:
    """POST every spec (Idempotency-Key per spec, sent again after a 503 that saved nothing); the job ids,
    appended to `ids` as they come.

    A 429 or 503 that names a job id means the job was written: it starts without being sent again.
    """
    ids = [] if ids is None else ids
    async with asyncio.timeout(LOAD_DEADLINE_SEC):
        for i, spec in enumerate(specs):
            while True:
                try:
                    response = await client.post(
                        "/api/jobs", json=spec.body(url), headers={"Idempotency-Key": f"{tag}-{i}"}
                    )
                except Exception:  # the in-process gateway lost a connection mid-request: send it again
                    await asyncio.sleep(SUBMIT_RETRY_SEC)
                    continue
                body = response.json()
                if response.status_code == 202:
                    ids.append(body["id"])
                    break
                if response.status_code in (429, 503) and body["error"].get("jobId"):
                    ids.append(body["error"]["jobId"])
                    break
                assert response.status_code == 503, response.text
                await asyncio.sleep(SUBMIT_RETRY_SEC)
    return ids


class JobWatch:
    """Reads the load's job rows through its own connection, riding out a PostgreSQL restart."""

    def __init__(self, settings: Settings, ids: list[str]) -> None:
        self.settings, self.ids = settings, ids

    async def rows(self) -> dict[str, asyncpg.Record]:
        conn = await asyncpg.connect(
            self.settings.database_url, server_settings={"search_path": self.settings.db_schema}
        )
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            return {row["id"]: row for row in await conn.fetch(JOB_ROWS, self.ids)}
        finally:
            await conn.close()

    async def try_rows(self) -> dict[str, asyncpg.Record] | None:
        try:
            return await self.rows()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None

    async def wait_ended(self, count: int) -> None:
        """Wait (bounded) until `count` of the load's jobs ended."""
        async with asyncio.timeout(LOAD_DEADLINE_SEC):
            while await self.ended_count() < count:  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(POLL_SEC)

    async def ended_count(self) -> int:
        rows = await self.try_rows()
        return -1 if rows is None else sum(1 for row in rows.values() if row["status"] in TERMINAL)

    async def wait_all_ended(self, deadline_sec: float = LOAD_DEADLINE_SEC) -> dict[str, asyncpg.Record]:
        """Poll until every job ended or the deadline passed (then the rows as they are)."""
        until = time.monotonic() + deadline_sec
        while True:
            rows = await self.try_rows()
            if rows is not None and all(
                (row := rows.get(i)) is not None and row["status"] in TERMINAL for i in self.ids
            ):
                return rows
            if time.monotonic() > until:
                return rows if rows is not None else await self.rows()
            await asyncio.sleep(POLL_SEC)


async def holding(js: Any, settings: Settings, stage: str) -> bool:
    """Whether the stage's worker holds a message it has not acked yet (it is mid-job)."""
    for priority in PRIORITIES:
        info = await js.consumer_info(settings.nats_stream, bus.consumer_name(stage, priority))
        if info.num_ack_pending > 0:
            return True
    return False


@dataclass
class Outcome:
    """What a load left behind, per spec index."""

    sha256: dict[int, str] = field(default_factory=dict)  # result sha256 per done job
    keys: set[str] = field(default_factory=set)  # result object keys
    delays: list[float] = field(default_factory=list)  # POST → done, s


@dataclass
class Figures:
    """A scenario's figures, printed and recorded in RELIABILITY.md."""

    scenario: str
    jobs: int
    faults: int
    done: int = 0
    failed: int = 0
    lost: int = 0
    stuck: int = 0
    duplicated: int = 0
    mismatched: int = 0
    p95_delay_sec: float = 0.0
    wall_sec: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        line = json.dumps(asdict(self))
        print(f"\nchaos figures: {line}")
        if path := os.environ.get(REPORT_ENV):
            with open(path, "a") as out:
                out.write(line + "\n")


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)


async def outcome_of(rows: dict[str, asyncpg.Record], ids: list[str], storage: Storage) -> Outcome:
    """The results of a load, checked against the bytes really stored."""
    out = Outcome(keys=set(await storage.list_keys("results/")))
    for index, job_id in enumerate(ids):
        row = rows.get(job_id)
        if row is None or row["status"] != "done":
            continue
        out.sha256[index] = row["result"]["sha256"]
        out.delays.append((row["done_at"] - row["created_at"]).total_seconds())
    return out


async def stored_sha256(storage: Storage, key: str, folder: Path) -> str:
    path = folder / hashlib.sha1(key.encode()).hexdigest()
    await storage.download(key, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def judge(
    scenario: str, faults: int, ids: list[str], rows: dict[str, asyncpg.Record], storage: Storage,
    baseline: Outcome, folder: Path, wall_sec: float, notes: dict[str, Any] | None = None,
) -> Figures:
    """Compare a faulty run with the fault-free one: every figure but `jobs`, `faults`, `done` must be 0."""
    run = await outcome_of(rows, ids, storage)
    figures = Figures(scenario, len(ids), faults, wall_sec=round(wall_sec, 1), p95_delay_sec=p95(run.delays))
    statuses = [rows[i]["status"] if i in rows else None for i in ids]
    figures.done = statuses.count("done")
    figures.failed = statuses.count("failed")
    figures.lost = statuses.count(None)
    figures.stuck = sum(1 for s in statuses if s is not None and s not in TERMINAL)
    figures.duplicated = sum(max(0, rows[i]["done_events"] - 1) for i in ids if i in rows)
    figures.duplicated += len(run.keys - baseline.keys)
    figures.mismatched = sum(1 for index, digest in run.sha256.items() if baseline.sha256.get(index) != digest)
    download = folder / "downloads"
    download.mkdir(exist_ok=True)
    for job_id in ids:  # the bytes in S3, not only what the job row says
        row = rows.get(job_id)
        if row is not None and row["status"] == "done":
            if await stored_sha256(storage, row["result_video_key"], download) != row["result"]["sha256"]:
                figures.mismatched += 1
    figures.notes["baseline_p95_delay_sec"] = p95(baseline.delays)
    figures.notes.update(notes or {})
    errors = sorted({rows[i]["error_code"] for i in ids if i in rows and rows[i]["status"] == "failed"})
    if errors:
        figures.notes["error_codes"] = errors
    figures.report()
    return figures


def assert_flawless(figures: Figures, fleet_logs: str = "") -> None:
    assert (figures.lost, figures.stuck, figures.failed, figures.duplicated, figures.mismatched) == (0, 0, 0, 0, 0), (
        figures, fleet_logs[-6000:],
    )
    assert figures.done == figures.jobs >= CHAOS_JOBS
