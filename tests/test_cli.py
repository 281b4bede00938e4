"""`clipjet clip` and `clipjet jobs` as a user runs them: a real command process against a real gateway process
(uvicorn), real workers, NATS, PostgreSQL and S3; the clip's bytes checked with ffprobe."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import srt
import webvtt

from services.stack.devstack import free_port
from shared.db import jobs, keys
from shared.runtime.resources import Resources
from shared.settings import Settings
from tests.conftest import Workers, make_key
from tests.gateway_proc import gateway_process
from tests.http_source import MediaServer
from tests.media import probe
from tests.speech import SpeechVideo, word_error_rate
from tests.test_uploads import larger_video  # noqa: F401 (a session fixture: a file that goes up in 3 parts)

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_SEC = 120.0  # longest one `clipjet` command may run in these tests
SUBS_COMMAND_TIMEOUT_SEC = 300.0  # longest a command waits for a clip with subtitles (Whisper on the CPU)
MAX_WER = 0.15  # word error rate of the saved subtitles against the spoken text (as tests/test_subtitles.py)
FRAME_SEC = 1 / 30  # the test videos' frame duration
MIB = 1024 * 1024


def _sigint_as_in_a_terminal() -> None:
    """A suite started in the background (`make test &`, nohup) ignores SIGINT, and an ignored signal stays
    ignored across exec, so Ctrl-C would never reach the command: give it the default a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs `clipjet …` in a folder of its own (the default output lands there), pointed at one gateway."""

    url: str
    key: str
    cwd: Path

    async def start(self, *args: str, key: str | None = None, **env: str) -> asyncio.subprocess.Process:
        environ = {**os.environ, "PYTHONPATH": str(REPO), "CLIPJET_API_URL": self.url,
                   "CLIPJET_API_KEY": self.key if key is None else key, **env}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services", *args, cwd=self.cwd, env=environ,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=_sigint_as_in_a_terminal,
        )

    async def __call__(self, *args: str, key: str | None = None, timeout: float = COMMAND_TIMEOUT_SEC,
                       **env: str) -> Run:
        proc = await self.start(*args, key=key, **env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Run(proc.returncode or 0, out.decode(), err.decode())


@pytest.fixture
def gateway(settings: Settings, resources: Resources) -> Iterator[str]:
    with gateway_process(settings, free_port()) as url:
        yield url


@pytest.fixture
async def cli(gateway: str, resources: Resources, tmp_path: Path) -> AsyncIterator[Cli]:
    folder = tmp_path / "cwd"
    folder.mkdir()
    yield Cli(gateway, await make_key(resources.db), folder)


@pytest.fixture
def media_server(sample_video: Path) -> Iterator[MediaServer]:
    with MediaServer(sample_video.parent) as server:
        yield server


def duration(path: Path) -> float:
    return float(probe(path)["format"]["duration"])


async def test_clip_a_local_file_end_to_end(cli: Cli, workers: Workers, resources: Resources,
                                            sample_video: Path) -> None:
    workers.start()
    run = await cli("clip", str(sample_video), "--start", "0:02.5", "--end", "0:07", "--precision", "frame")
    assert run.code == 0, run.stderr
    out = cli.cwd / "sample_2.5-7.mp4"  # the default name: <source>_<start>-<end>.mp4, here
    assert abs(duration(out) - 4.5) <= 2 * FRAME_SEC
    assert f"clip      {out}" in run.stdout  # says where it is
    lines = run.stdout.splitlines()  # not a terminal: plain lines, a few, not one per poll
    assert lines[0].startswith("upload    sample.mp4") and any(line.startswith("progress  ") for line in lines)
    assert len(lines) < 40, run.stdout
    job_id = next(line.split()[1] for line in lines if line.startswith("job "))
    row = await jobs.get_job(resources.db, uuid.UUID(job_id))
    assert (row["request"]["startSec"], row["request"]["endSec"]) == (2.5, 7.0)
    assert row["request"]["source"]["key"].startswith("uploads/")


async def test_clip_a_url_source_with_json_output(cli: Cli, workers: Workers, media_server: MediaServer) -> None:
    workers.start()
    run = await cli("clip", media_server.url("sample.mp4"), "--start", "1", "--end", "3.5", "-o", "out/x.mp4",
                    "--json", "--poll")
    assert run.code == 0, run.stderr
    view = json.loads(run.stdout)  # the final job view and nothing else
    assert view["status"] == "done" and view["request"]["source"] == {"type": "url",
                                                                      "url": media_server.url("sample.mp4")}
    assert abs(view["result"]["durationSec"] - 2.5) <= 2 * FRAME_SEC
    assert view["urls"]["video"].startswith("http")
    saved = cli.cwd / "out" / "x.mp4"
    assert abs(duration(saved) - 2.5) <= 2 * FRAME_SEC
    assert f"clip      {saved}" in run.stderr  # with --json the human lines go to stderr
    assert not list(saved.parent.glob("*.part"))

    listed = await cli("jobs")
    assert listed.code == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:3] == ["ID", "STATUS", "PROGRESS"]
    assert row.split()[:2] == [view["id"], "done"] and "0:01.000-0:03.500" in row
    as_json = json.loads((await cli("jobs", "--json", "--limit", "5")).stdout)
    assert [job["id"] for job in as_json["jobs"]] == [view["id"]]


async def test_a_failed_job_exits_non_zero_with_its_code(
    cli: Cli, workers: Workers, media_server: MediaServer
) -> None:
    workers.start()
    run = await cli("clip", media_server.url("sample.mp4"), "--start", "0:25", "--end", "0:28")  # a 20 s video
    assert run.code == 1, run.stdout
    assert "end_past_duration" in run.stderr and "failed" in run.stderr
    assert not list(cli.cwd.iterdir())  # nothing saved
    as_json = await cli("clip", media_server.url("sample.mp4"), "--start", "25", "--end", "28", "--json")
    assert as_json.code == 1
    view = json.loads(as_json.stdout)
    assert (view["status"], view["errorCode"]) == ("failed", "end_past_duration")


async def test_gateway_refusals_exit_non_zero_with_code_and_message(
    cli: Cli, resources: Resources, media_server: MediaServer
) -> None:
    url = media_server.url("sample.mp4")
    unknown = await cli("clip", url, "--start", "1", "--end", "2", key="cj_000000000000_" + "A" * 43)
    assert unknown.code == 1 and "auth_invalid (HTTP 401)" in unknown.stderr and "CLIPJET_API_KEY" in unknown.stderr
    backwards = await cli("clip", url, "--start", "1:30", "--end", "1:02.5")
    assert backwards.code == 1 and "end_before_start (HTTP 422)" in backwards.stderr
    as_json = await cli("clip", url, "--start", "1:30", "--end", "1:02.5", "--json")
    assert json.loads(as_json.stdout)["error"]["code"] == "end_before_start"
    no_room = await make_key(resources.db, quotas=keys.Quotas(max_in_flight=0, max_jobs_per_day=10,
                                                              max_source_seconds_per_day=100))
    limited = await cli("clip", url, "--start", "1", "--end", "2", key=no_room)
    assert limited.code == 1 and "quota_exceeded (HTTP 429)" in limited.stderr
    assert "retry after 30 s" in limited.stderr  # the Retry-After header
    bad_time = await cli("clip", url, "--start", "1:75", "--end", "2:00")
    assert bad_time.code == 2 and "[HH:]MM:SS[.ms]" in bad_time.stderr  # refused before any request
    missing = await cli("clip", "no-such-file.mp4", "--start", "1", "--end", "2")
    assert missing.code == 1 and "invalid_source" in missing.stderr


async def test_ctrl_c_ends_the_command_not_the_job(cli: Cli, resources: Resources,
                                                  media_server: MediaServer) -> None:
    """No workers: the job stays queued while the command follows it; SIGINT stops the command only."""
    proc = await cli.start("clip", media_server.url("sample.mp4"), "--start", "1", "--end", "2")
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_SEC):
            assert proc.stdout is not None
            while not (line := (await proc.stdout.readline()).decode()).startswith("job "):
                assert line, "the command ended before it named its job"
            proc.send_signal(signal.SIGINT)
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130 and "keeps running" in err.decode(), err
    row = await jobs.get_job(resources.db, uuid.UUID(line.split()[1]))
    assert row["status"] == "queued"


async def test_unreachable_gateway(cli: Cli) -> None:
    cli.url = f"http://127.0.0.1:{free_port()}"
    run = await cli("jobs")
    assert run.code == 1 and "unreachable" in run.stderr and cli.url in run.stderr


@pytest.mark.settings(upload_single_put_max_mb=1, upload_part_mb=5)
async def test_a_big_file_goes_up_in_parts(cli: Cli, workers: Workers, larger_video: Path) -> None:  # noqa: F811
    assert larger_video.stat().st_size > 10 * MIB  # over the single-PUT limit: a multipart slot, three parts
    workers.start()
    run = await cli("clip", str(larger_video), "--start", "20", "--end", "22.5", "-o", "big.mp4")
    assert run.code == 0, run.stderr
    assert abs(duration(cli.cwd / "big.mp4") - 2.5) <= 2 * FRAME_SEC


async def test_subtitles_are_saved_next_to_the_clip(cli: Cli, workers: Workers, speech_video: SpeechVideo) -> None:
    workers.start()
    run = await cli("clip", str(speech_video.path), "--start", "5.5", "--end", "19.5", "--subs", "--lang", "en",
                    "-o", "talk.mp4", timeout=SUBS_COMMAND_TIMEOUT_SEC)
    assert run.code == 0, run.stderr
    srt_path, vtt_path = cli.cwd / "talk.srt", cli.cwd / "talk.vtt"
    assert f"subtitles {srt_path}" in run.stdout and f"subtitles {vtt_path}" in run.stdout
    cues = list(srt.parse(srt_path.read_text()))  # real parsers of what was saved
    assert word_error_rate(speech_video.text, " ".join(cue.content for cue in cues)) <= MAX_WER
    assert [c.text for c in webvtt.read(str(vtt_path)).captions] == [cue.content for cue in cues]


async def test_progress_comes_over_the_event_stream(cli: Cli, workers: Workers, media_server: MediaServer) -> None:
    """With polling made useless (one poll an hour), the job is followed to its end only by its event stream."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {cli.key}"}) as http:
        probe_events = await http.get(f"{cli.url}/api/jobs/{uuid.uuid4()}/events")
    assert probe_events.json()["error"]["code"] == "job_not_found"  # the route exists (an unknown job's 404)
    workers.start()
    run = await cli("clip", media_server.url("sample.mp4"), "--start", "2", "--end", "6", "--timeout", "90",
                    CLIPJET_POLL_SEC="3600")
    assert run.code == 0, run.stderr
    assert abs(duration(cli.cwd / "sample_2-6.mp4") - 4.0) <= 2 * FRAME_SEC
    assert any(line.startswith("progress  processing") for line in run.stdout.splitlines()), run.stdout
    assert "polling" not in run.stdout
