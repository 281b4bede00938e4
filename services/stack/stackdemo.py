"""The local stack's demo: upload a generated sample, clip 12.5 to 20 s of it, download the clip, say where it is.

It prints the clip's path and the result's URL without its query (a signed URL is a credential: whoever has it
may download the clip until it expires); the signed URL itself comes from ``GET /api/jobs/<id>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from services.stack.supervisor import say
from shared.media.testpattern import make_test_pattern

JOB_TIMEOUT_S = 120.0  # how long the demo waits for its job
JOB_POLL_S = 0.25
SAMPLE_NAME, CLIP_NAME = "demo-sample.mp4", "demo-clip.mp4"
SAMPLE_SECONDS, SAMPLE_SIZE, SAMPLE_FPS, SAMPLE_GOP_FRAMES = 30, "1280x720", 30, 60
DEMO_START_S, DEMO_END_S = 12.5, 20.0
REDACTED_QUERY = "<signature not shown>"


class DemoError(RuntimeError):
    """The demo job could not be made or did not finish."""


AUTH_ARG = '-H "Authorization: Bearer $CLIPJET_API_KEY" '  # what the printed curl lines send


def redact_url(url: str) -> str:
    """``url`` without its query string (where a signed URL keeps its credential and signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, REDACTED_QUERY if parts.query else "", ""))


def _ok(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.is_error:
        raise DemoError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else {}


def _wait_done(http: httpx.Client, base_url: str, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    url = f"{base_url}/api/jobs/{job_id}"
    while (job := _ok(http.get(url, headers=auth), "get job"))["status"] not in ("done", "failed", "canceled"):
        if time.monotonic() > deadline:
            raise DemoError(f"demo job {job_id} still {job['status']} (stage {job['stage']}) after "
                            f"{JOB_TIMEOUT_S:.0f} s")
        time.sleep(JOB_POLL_S)
    if job["status"] != "done":
        raise DemoError(f"demo job {job_id} failed: {job.get('errorCode')}: {job.get('errorMessage')}")
    return job


def run_demo(http: httpx.Client, base_url: str, data_dir: Path, api_key: str) -> None:
    """Upload a sample, clip it, download the clip into ``data_dir``, and print what was done.

    The key goes on the gateway's requests only: a signed storage URL must not carry an Authorization header."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    sample = make_test_pattern(data_dir / SAMPLE_NAME, seconds=SAMPLE_SECONDS, size=SAMPLE_SIZE, fps=SAMPLE_FPS,
                               gop_frames=SAMPLE_GOP_FRAMES)
    say(f"demo: sample {sample} ({sample.stat().st_size / 1e6:.1f} MB); uploading")
    slot = _ok(http.post(f"{base_url}/api/uploads", headers=auth, json={
        "filename": SAMPLE_NAME, "contentType": "video/mp4", "sizeBytes": sample.stat().st_size}), "upload slot")
    with sample.open("rb") as body:
        _ok(http.request(slot["method"], slot["url"], headers=slot["headers"], content=body), "upload PUT")
    request = {"source": {"type": "upload", "key": slot["key"]}, "startSec": DEMO_START_S, "endSec": DEMO_END_S,
               "priority": "fast"}
    job_id = _ok(http.post(f"{base_url}/api/jobs", headers=auth, json=request), "create job")["id"]
    say(f"demo: job {job_id} queued; waiting up to {JOB_TIMEOUT_S:.0f} s")
    job = _wait_done(http, base_url, job_id, auth)
    clip = data_dir / CLIP_NAME
    with http.stream("GET", job["urls"]["video"]) as response, clip.open("wb") as out:
        if response.is_error:
            raise DemoError(f"clip download: HTTP {response.status_code}")
        for chunk in response.iter_bytes():
            out.write(chunk)
    result = job["result"]
    for line in (f"job       {job_id}  status {job['status']}  ({time.monotonic() - started:.1f} s in all)",
                 f"asked     {DEMO_START_S:g} to {DEMO_END_S:g} s; got {result['actualStartSec']:.3f} to "
                 f"{result['actualEndSec']:.3f} s ({result['durationSec']:.2f} s, {result['size']} bytes, "
                 f"{result.get('cutPath', 'copy')})",
                 f"clip      {clip}",
                 f"result    {redact_url(job['urls']['video'])}  (signed URL: curl -s {AUTH_ARG}"
                 f"{base_url}/api/jobs/{job_id})",
                 f"your own: set -a; . {data_dir / 'stack.env'}; set +a",
                 f"          curl -s -X POST {base_url}/api/jobs {AUTH_ARG}-H 'Content-Type: application/json' -d '"
                 + '{"source":{"type":"upload","key":"' + slot["key"] + '"},"startSec":3,"endSec":9}' + "'",
                 f"          then curl -s {AUTH_ARG}{base_url}/api/jobs/<id>   (uploads: POST {base_url}/api/uploads)"):
        say("demo: " + line)
