"""A finished job's files, saved next to each other: the clip, and its subtitles (.srt, .vtt) when it has them.

Each file is written to `<name>.part` and renamed when complete, so a broken download never leaves a file that
looks whole. Signed URLs are fetched without the API key (object storage must not see it)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from shared.jobs.contracts import ResultUrls

from .api import Api, ApiError
from .display import Display

SUBTITLE_SUFFIXES = {"srt": ".srt", "vtt": ".vtt"}  # ResultUrls field → file suffix next to the clip


def save_results(api: Api, urls: ResultUrls, clip_path: Path, display: Display) -> list[Path]:
    """Download the clip to `clip_path` and its subtitles next to it; the paths written, the clip first."""
    wanted = [(urls.video, clip_path)]
    for field, suffix in SUBTITLE_SUFFIXES.items():
        if url := getattr(urls, field):
            wanted.append((url, clip_path.with_suffix(suffix)))
    return [_download(api, url, path, display) for url, path in wanted]


def _download(api: Api, url: str, path: Path, display: Display) -> Path:
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with api.storage.stream("GET", url) as response:
            if response.status_code != 200:
                raise ApiError(response.status_code, "download_failed",
                               f"object storage answered {response.status_code} for {path.name} (a signed URL "
                               f"lasts urls.expiresInSec: fetch the job again for fresh ones)")
            size = response.headers.get("Content-Length")
            on_bytes = display.download(path.name, int(size) if size and size.isdigit() else None)
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    on_bytes(len(chunk))
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise ApiError(0, "download_failed", f"the download of {path.name} broke off: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        os.replace(partial, path)
    except OSError as exc:  # e.g. `path` is a folder now: the whole file stays where it was written
        raise ApiError(0, "save_failed", f"could not name the download {path} ({exc.strerror}); "
                                         f"it is complete in {partial}") from exc
    return path.resolve()
