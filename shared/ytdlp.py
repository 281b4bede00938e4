"""Pages yt-dlp understands (YouTube and others): find the media stream to cut, through the guarded proxy.

The page's host must be in FETCH_ALLOWED_DOMAINS (or a subdomain of one). yt-dlp runs its extraction in a
thread with a time limit, low retries and no throttling waits, all of its requests through the session's
guarded proxy. It picks one stream the trimmer can stream-copy (H.264/AAC in MP4 first, up to
YTDLP_MAX_HEIGHT); the fetcher then reads only the needed section of that stream through the same proxy
(ffmpeg seeks in it: for HLS only the segments in range are fetched), as yt-dlp's own `download_ranges`
would, but keeping the source's timeline so the keyframe and copy logic stays the one for URL sources.

Site blocks (HTTP 403, sign-in or bot checks, geo-blocks, private or removed videos, unsupported pages)
become permanent errors with stable codes and a message that says what to do instead.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import yt_dlp
import yt_dlp.utils

from shared.errors import FetchRefused, Permanent, SourceUnreachable
from shared.fetchproxy import FetchSession
from shared.logs import get_logger
from shared.netguard import split_url
from shared.settings import Settings

log = get_logger("ytdlp")
UPLOAD_INSTEAD = "download the video yourself and upload the file instead (POST /api/uploads)"

# (pattern in yt-dlp's error message, stable code, what the user is told): first match wins.
BLOCKS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"sign in|log ?in|not a bot|cookies", re.I), "source_login_required",
     "the site asks for a sign-in or a bot check before it serves this video"),
    (re.compile(r"country|geo.?restrict|region", re.I), "source_geo_blocked",
     "the site does not serve this video in the server's region"),
    (re.compile(r"private video|members.only|premium", re.I), "source_private",
     "the video is private or for members only"),
    (re.compile(r"HTTP Error 40[34]|HTTP Error 410|unavailable|removed|deleted|does not exist|not found", re.I),
     "source_unavailable", "the site refused the page or the video is not there (removed, 403/404)"),
    (re.compile(r"unsupported url|no video formats|no suitable", re.I), "source_unsupported",
     "no video could be found on this page"),
    (re.compile(r"requested format is not available", re.I), "source_unsupported",
     "the page has no format clipjet can cut"),
)
TRANSIENT = re.compile(r"timed out|timeout|temporarily|HTTP Error 5\d\d|connection (reset|refused)", re.I)


@dataclass(frozen=True)
class PageMedia:
    """The stream yt-dlp chose on a page: where to read it, with which headers, and what identifies it."""

    url: str
    protocol: str
    format_id: str
    identity: str  # extractor:id:format, for the request fingerprint
    duration_sec: float | None
    headers: dict[str, str] = field(default_factory=dict)


def allowed_domains(settings: Settings) -> list[str]:
    return [d.strip().lower().lstrip(".") for d in settings.fetch_allowed_domains.split(",") if d.strip()]


def check_page_url(url: str, settings: Settings) -> None:
    """FetchRefused unless the page URL is http(s), without user info, on an allowed domain."""
    parts, _, _ = split_url(url)
    host = (parts.hostname or "").lower().rstrip(".")
    domains = allowed_domains(settings)
    if not any(host == d or host.endswith(f".{d}") for d in domains):
        raise FetchRefused(
            f"{host!r} is not an allowed site for this source type (allowed: {', '.join(domains)}); "
            f"give a direct media URL as a url source, or {UPLOAD_INSTEAD}", code="domain_not_allowed",
        )


def format_selector(max_height: int) -> str:
    """One file with audio and video, preferring what copies into MP4 (H.264 + AAC), at most max_height tall."""
    h = f"[height<={max_height}]"
    return "/".join([
        f"b[vcodec^=avc1][acodec^=mp4a]{h}", f"b[ext=mp4]{h}", f"b{h}", "b[height<=?100000]", "b",
    ])


def _options(session: FetchSession, settings: Settings) -> dict[str, Any]:
    return {
        "proxy": session.url, "format": format_selector(settings.ytdlp_max_height), "quiet": True,
        "no_warnings": True, "noprogress": True, "noplaylist": True, "playlist_items": "1", "skip_download": True,
        "retries": settings.ytdlp_retries, "extractor_retries": settings.ytdlp_retries,
        "fragment_retries": settings.ytdlp_retries, "file_access_retries": 0, "retry_sleep_functions": {},
        "sleep_interval_requests": 0, "socket_timeout": settings.fetch_idle_timeout_sec, "cachedir": False,
        "call_home": False, "check_formats": False, "logger": _Quiet(), "color": "no_color",
    }


class _Quiet:
    """yt-dlp's logger: its chatter to debug, its warnings to ours."""

    def debug(self, msg: str) -> None:
        return

    def info(self, msg: str) -> None:
        return

    def warning(self, msg: str) -> None:
        log.info("ytdlp_warning", detail=msg[:500])

    def error(self, msg: str) -> None:
        log.info("ytdlp_error", detail=msg[:500])


def _extract(url: str, options: dict[str, Any]) -> dict[str, Any]:
    with yt_dlp.YoutubeDL(options) as ydl:
        info = ydl.extract_info(url, download=False)
        if info is None:
            raise yt_dlp.utils.DownloadError("no video formats found")
        return ydl.sanitize_info(info)


def classify(message: str) -> Exception:
    """The clipjet error for a yt-dlp failure message."""
    for pattern, code, what in BLOCKS:
        if pattern.search(message):
            return Permanent(f"{what}; {UPLOAD_INSTEAD}", code=code)
    if TRANSIENT.search(message):
        return SourceUnreachable(f"the site did not answer in time: {message[:300]}")
    return Permanent(f"the page could not be read ({message[:300]}); {UPLOAD_INSTEAD}", code="source_unavailable")


async def find_media(url: str, session: FetchSession, settings: Settings) -> PageMedia:
    """Run yt-dlp's extraction on the page (in a thread, bounded by YTDLP_TIMEOUT_SEC)."""
    check_page_url(url, settings)
    with session.errors():
        try:
            info = await asyncio.wait_for(
                asyncio.to_thread(_extract, url, _options(session, settings)), settings.ytdlp_timeout_sec
            )
        except TimeoutError as exc:
            raise SourceUnreachable(f"reading the page took over {settings.ytdlp_timeout_sec:.0f} s") from exc
        except yt_dlp.utils.YoutubeDLError as exc:
            if session.refusal is not None:
                raise session.refusal from exc
            raise classify(str(exc)) from exc
    chosen = info.get("requested_formats") or [info]
    if len(chosen) != 1 or not chosen[0].get("url"):
        raise Permanent(f"the page offers no single stream with audio and video; {UPLOAD_INSTEAD}",
                        code="source_unsupported")
    fmt = chosen[0]
    identity = f"ytdlp:{info.get('extractor_key', '')}:{info.get('id', '')}:{fmt.get('format_id', '')}"
    return PageMedia(
        url=fmt["url"], protocol=str(fmt.get("protocol") or ""), format_id=str(fmt.get("format_id") or ""),
        identity=identity, duration_sec=info.get("duration"), headers=dict(fmt.get("http_headers") or {}),
    )
