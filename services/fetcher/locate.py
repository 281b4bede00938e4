"""Where the fetcher reads a job's source, and what identifies it for the request fingerprint.

- Uploads are copied server-side once (pinned to the ETag seen) to `sources/…` and checked there (size limit,
  media sniff, sha256): the fetcher and every later stage read that copy, never the client's key again.
- URL sources are read through the guarded proxy: when the server answers ranges, the probe and ffmpeg
  read only the moov and the needed span; otherwise the file is downloaded whole (still guarded).
- Pages (YouTube and other yt-dlp sites) are resolved by yt-dlp to one stream, then read like a URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import FetchRefused, Transient
from shared.jobs.contracts import Artifact, ClipJobMessage, StreamFacts, UploadSource, UrlSource, YoutubeSource
from shared.jobs.pipeline import FETCH
from shared.media.probe import probe
from shared.net.fetch import fetch_to_file, inspect_url
from shared.net.fetchproxy import FetchSession
from shared.net.ytdlp import download_section, find_media
from shared.runtime.worker import StageDeps
from shared.settings import Settings
from shared.storage.s3 import sha256_file
from shared.storage.scratch import ScratchQuota
from shared.storage.upload_check import verify_upload

Stager = Callable[[float, float, Path], Awaitable[Path]]  # (keyframe, end, folder) -> the staged file
PROBE_URL_TTL_SEC = 3600  # lifetime of the signed URL the probe and ffmpeg read an upload through, s


@dataclass
class Located:
    """How to read the source: a path or URL, the options to read it with, and its identity."""

    media: str
    identity: str
    artifact: Artifact | None = None  # the source already sits in storage (an upload)
    av_options: dict[str, str] = field(default_factory=dict)  # for the in-process probe (PyAV)
    ffmpeg_args: list[str] = field(default_factory=list)  # for ffmpeg, before `-i`
    stage: Stager | None = None  # writes [keyframe, end] into a folder itself (yt-dlp); None: ffmpeg copy
    scratch_ticket: str = ""  # a scratch reservation for a whole download, released when the message is done
    section_streams: list[StreamFacts] = field(default_factory=list)  # the staged section's streams (yt-dlp)
    offset_sec: float = 0.0  # source time of the media's t=0 (a batch's staged span starts inside the source)
    duration_sec: float | None = None  # the source's duration when `media` holds only a span of it (a batch)


def _remote(url: str, session: FetchSession, identity: str, headers: dict[str, str] | None = None) -> Located:
    av_options, args = session.av_options(), session.ffmpeg_input_args(url)
    if headers:
        joined = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        av_options["headers"] = joined
        args += ["-headers", joined]
    return Located(url, identity, None, av_options, args)


async def reserve_download(settings: Settings, size: int) -> str:
    """Reserve scratch for a whole download, waiting (within FETCH_TIMEOUT_SEC) for room; refused when it could
    never fit in the node's quota."""
    quota = ScratchQuota(settings)
    if size + quota.per_message > quota.quota:
        raise FetchRefused(f"the source is {size} bytes and its server does not serve ranges: more than this "
                           f"node's scratch space; give a URL that serves ranges or upload it", code="source_too_large")
    try:
        return await asyncio.wait_for(quota.reserve_when_room(size), settings.fetch_timeout_sec)
    except TimeoutError as exc:
        raise Transient("no scratch space for the download; retried later", code="scratch_full") from exc


def unknown_size_reservation(settings: Settings) -> int:
    """Scratch reserved for a download whose size the server does not say: FETCH_MAX_BYTES, or all the node's
    scratch beyond one message's share when that is less."""
    quota = ScratchQuota(settings)
    return max(0, min(settings.fetch_max_bytes, quota.quota - quota.per_message))


def release_download(settings: Settings, ticket: str) -> None:
    if ticket:
        ScratchQuota(settings).release(ticket)


async def locate(job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> Located:
    settings, storage = deps.res.settings, deps.res.storage
    match job.source:
        case UploadSource(key=key):
            checked = await verify_upload(storage, deps.res.db, key, settings)
            artifact = Artifact(stage=FETCH, role="source", key=checked.key, size=checked.size, sha256=checked.sha256)
            url = await storage.internal_url(checked.key, PROBE_URL_TTL_SEC)
            return Located(url, f"sha256:{checked.sha256}", artifact)
        case UrlSource(url=url):
            remote = await inspect_url(url, session, settings)
            if remote.ranges:  # without a validator nothing proves the bytes are the same: no reuse
                size = f":size={remote.size}" if remote.size is not None else ""
                identity = f"url:{remote.url}:validator={remote.validator}{size}" if remote.validator else job.id
                return _remote(remote.url, session, identity)
            located = Located("", "")
            # the whole file lands in scratch: reserve its size beyond the message's (no size: the most a download
            # may be), and the download is refused past what was reserved
            reserved = remote.size if remote.size is not None else unknown_size_reservation(settings)
            located.scratch_ticket = await reserve_download(settings, reserved)
            path = deps.scratch / "download"
            fetched = await fetch_to_file(remote.url, path, settings, session, max_bytes=reserved)
            if fetched.validator:
                located.identity = f"url:{fetched.url}:validator={fetched.validator}:size={fetched.size}"
            else:
                located.identity = f"sha256:{await sha256_file(path)}"
            located.media = str(path)
            return located
        case YoutubeSource(url=url):
            page = await find_media(url, session, settings)
            located = _remote(page.url, session, page.identity, page.headers)

            async def section(start: float, end: float, folder: Path) -> Path:
                path = await download_section(page, session, settings, start, end, folder)
                located.section_streams = (await probe(str(path))).streams  # video and audio may come apart
                return path

            located.stage = section
            return located
