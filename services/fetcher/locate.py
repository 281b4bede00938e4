"""Where the fetcher reads a job's source, and what identifies it for the request fingerprint.

- Uploads are read in place through a signed internal URL, once checked (size limit, media sniff, sha256).
- URL sources are read through the guarded proxy: when the server answers ranges, the probe and ffmpeg
  read only the moov and the needed span; otherwise the file is downloaded whole (still guarded).
- Pages (YouTube and other yt-dlp sites) are resolved by yt-dlp to one stream, then read like a URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.contracts import Artifact, ClipJobMessage, UploadSource, UrlSource, YoutubeSource
from shared.fetch import fetch_to_file, inspect_url
from shared.fetchproxy import FetchSession
from shared.pipeline import FETCH
from shared.storage import sha256_file
from shared.upload_check import verify_upload
from shared.worker import StageDeps
from shared.ytdlp import download_section, find_media

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


def _remote(url: str, session: FetchSession, identity: str, headers: dict[str, str] | None = None) -> Located:
    av_options, args = session.av_options(), session.ffmpeg_input_args(url)
    if headers:
        joined = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        av_options["headers"] = joined
        args += ["-headers", joined]
    return Located(url, identity, None, av_options, args)


async def locate(job: ClipJobMessage, deps: StageDeps, session: FetchSession) -> Located:
    settings, storage = deps.res.settings, deps.res.storage
    match job.source:
        case UploadSource(key=key):
            checked = await verify_upload(storage, deps.res.db, key, settings)
            artifact = Artifact(stage=FETCH, role="source", key=key, size=checked.size, sha256=checked.sha256)
            return Located(await storage.internal_url(key, PROBE_URL_TTL_SEC), f"sha256:{checked.sha256}", artifact)
        case UrlSource(url=url):
            remote = await inspect_url(url, session, settings)
            if remote.ranges:  # without a validator nothing proves the bytes are the same: no reuse
                size = f":size={remote.size}" if remote.size is not None else ""
                identity = f"url:{remote.url}:validator={remote.validator}{size}" if remote.validator else job.id
                return _remote(remote.url, session, identity)
            path = deps.scratch / "download"
            fetched = await fetch_to_file(remote.url, path, settings, session)
            if fetched.validator:
                identity = f"url:{fetched.url}:validator={fetched.validator}:size={fetched.size}"
            else:
                identity = f"sha256:{await sha256_file(path)}"
            return Located(str(path), identity)
        case YoutubeSource(url=url):
            page = await find_media(url, session, settings)
            located = _remote(page.url, session, page.identity, page.headers)

            async def section(start: float, end: float, folder: Path) -> Path:
                return await download_section(page, session, settings, start, end, folder)

            located.stage = section
            return located
