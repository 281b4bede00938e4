"""Pages yt-dlp understands (YouTube and others): find the stream, then download only the needed section.

The page's host must be in FETCH_ALLOWED_DOMAINS (or a subdomain of one). yt-dlp runs in a thread with a time
limit, low retries and no throttling waits, every request through the session's guarded proxy (its ffmpeg,
which downloads the section, gets the proxy and an http(s)-only protocol whitelist as input options). Format
selection prefers what the trimmer can stream-copy into MP4 (H.264 + AAC), at most YTDLP_MAX_HEIGHT tall, and
takes only plain http(s) files: every URL of the chosen formats (and any fragment) passes the guard before it
is used (`check_formats`), and HLS/DASH streams are not read (a playlist names URLs ffmpeg would open itself).

The fetcher first probes the chosen stream (through the proxy) for the keyframe at or before startSec, then
asks yt-dlp for the section from that keyframe (`download_ranges`): the section's t=0 is then exactly that
keyframe, which is what the trim stage expects of staged media.

Site blocks (HTTP 403, sign-in or bot checks, geo-blocks, private or removed videos, unsupported pages)
become permanent errors with stable codes and a message that says what to do instead.

yt-dlp itself (about 28 MB resident once imported) is imported on the first page read, not with this module:
every worker checks page URLs (`check_page_url`), only the fetcher reads pages.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.errors import FetchRefused, Permanent, SourceUnreachable
from shared.net.fetchproxy import FetchSession
from shared.net.netguard import Policy, check_url, split_url
from shared.runtime.logs import get_logger
from shared.settings import Settings

log = get_logger("ytdlp")
SECTION_SUFFIXES = (".mp4", ".m4a", ".mkv", ".webm")  # files yt-dlp may write a section as
# the only yt-dlp protocols clipjet reads: one plain http(s) file per format. Not HLS (a playlist makes ffmpeg
# open every URL it names, some of them past the guarded proxy: shared.media.inputs), DASH, RTMP, ...
READABLE_PROTOCOLS = frozenset({"http", "https"})
PROTOCOL_FILTER = "[protocol^=http][protocol!*=dash]"  # yt-dlp format filter: http/https only
URL_FIELDS = ("url", "manifest_url", "fragment_base_url")  # where a format names URLs, besides its fragments
UPLOAD_INSTEAD = "download the video yourself and upload the file instead (POST /api/uploads)"

# (pattern in yt-dlp's error message, stable code, what the user is told): first match wins.
BLOCKS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"sign in|log ?in|not a bot|cookies", re.I), "source_login_required",
     "the site asks for a sign-in or a bot check before it serves this video"),
    (re.compile(r"country|geo.?restrict|region", re.I), "source_geo_blocked",
     "the site does not serve this video in the server's region"),
    (re.compile(r"private video|members.only|premium", re.I), "source_private",
     "the video is private or for members only"),
    (re.compile(r"HTTP Error 403|forbidden|blocked", re.I), "source_blocked",
     "the site refused to serve the page or video to clipjet (HTTP 403)"),
    (re.compile(r"HTTP Error 40[04]|HTTP Error 410|unavailable|removed|deleted|does not exist|not found", re.I),
     "source_unavailable", "the page or video is not there (removed, or HTTP 404)"),
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
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # yt-dlp's own result, for the download


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
    """Video and audio that copy into MP4 (H.264 + AAC, separate or joined) first, at most max_height tall;
    plain http(s) files only (READABLE_PROTOCOLS)."""
    h = f"[height<={max_height}]{PROTOCOL_FILTER}"
    p = PROTOCOL_FILTER
    return "/".join([
        f"bv*[vcodec^=avc1]{h}+ba[acodec^=mp4a]{p}", f"b[vcodec^=avc1][acodec^=mp4a]{h}", f"b[ext=mp4]{h}",
        f"bv*{h}+ba{p}", f"b{h}", f"b{p}",
    ])


async def check_formats(formats: list[dict[str, Any]], settings: Settings) -> None:
    """Every URL the chosen formats name passes the guard (http(s), no user info, no forbidden address: else
    FetchRefused), and each is a plain http(s) file clipjet reads (else source_unsupported), before any is used."""
    policy = Policy.of(settings)
    for fmt in formats:
        urls = [str(fmt[name]) for name in URL_FIELDS if fmt.get(name)]
        urls += [str(f["url"]) for f in fmt.get("fragments") or [] if isinstance(f, dict) and f.get("url")]
        for url in urls:
            await check_url(url, policy)
        if str(fmt.get("protocol") or "") not in READABLE_PROTOCOLS or fmt.get("fragments"):
            raise Permanent(f"the page offers only streamed formats ({fmt.get('protocol')}) clipjet does not read; "
                            f"{UPLOAD_INSTEAD}", code="source_unsupported")


def _options(session: FetchSession, settings: Settings) -> dict[str, Any]:
    return {
        "proxy": session.url, "format": format_selector(settings.ytdlp_max_height), "quiet": True,
        "no_warnings": True, "noprogress": True, "noplaylist": True, "playlist_items": "1", "skip_download": True,
        "retries": settings.ytdlp_retries, "extractor_retries": settings.ytdlp_retries,
        "fragment_retries": settings.ytdlp_retries, "file_access_retries": 0, "retry_sleep_functions": {},
        "sleep_interval_requests": 0, "socket_timeout": settings.fetch_idle_timeout_sec, "cachedir": False,
        "call_home": False, "check_formats": False, "logger": _Quiet(), "color": "no_color",
        "merge_output_format": "mp4", "fixup": "never", "overwrites": True, "updatetime": False,
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


def _yt_dlp() -> ModuleType:
    """The yt_dlp package, imported on first use."""
    import yt_dlp
    import yt_dlp.utils

    return yt_dlp


def _extract(url: str, options: dict[str, Any]) -> dict[str, Any]:
    with _yt_dlp().YoutubeDL(options) as ydl:
        info = ydl.extract_info(url, download=False)
        if info is None:
            raise _yt_dlp().utils.DownloadError("no video formats found")
        return info


def _download(info: dict[str, Any], options: dict[str, Any], folder: Path) -> Path | None:
    with _yt_dlp().YoutubeDL(options) as ydl:
        ydl.process_ie_result(dict(info), download=True)
    found = sorted(p for p in folder.glob("section.*") if p.suffix in SECTION_SUFFIXES)
    return found[0] if found else None


def classify(message: str) -> Exception:
    """The clipjet error for a yt-dlp failure message."""
    for pattern, code, what in BLOCKS:
        if pattern.search(message):
            return Permanent(f"{what}; {UPLOAD_INSTEAD}", code=code)
    if TRANSIENT.search(message):
        return SourceUnreachable(f"the site did not answer in time: {message[:300]}")
    return Permanent(f"the page could not be read ({message[:300]}); {UPLOAD_INSTEAD}", code="source_unavailable")


async def _run(session: FetchSession, settings: Settings, what: str, fn: Any, *args: Any) -> Any:
    """Run blocking yt-dlp work in a thread, bounded by YTDLP_TIMEOUT_SEC; its errors become clipjet errors.

    On timeout the thread cannot be killed: it ends when yt-dlp's own socket timeout hits (the proxy session
    is closed by then, so it can fetch nothing more)."""
    yt_dlp = _yt_dlp()
    with session.errors():
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), settings.ytdlp_timeout_sec)
        except TimeoutError as exc:
            raise SourceUnreachable(f"{what} took over {settings.ytdlp_timeout_sec:.0f} s") from exc
        except yt_dlp.utils.YoutubeDLError as exc:
            if session.refusal is not None:
                raise session.refusal from exc
            raise classify(str(exc)) from exc


async def find_media(url: str, session: FetchSession, settings: Settings) -> PageMedia:
    """Run yt-dlp's extraction on the page; the chosen stream (the video one when video and audio are apart)."""
    check_page_url(url, settings)
    info = await _run(session, settings, "reading the page", _extract, url, _options(session, settings))
    chosen = info.get("requested_formats") or [info]
    fmt = chosen[0]
    if not fmt.get("url"):
        raise Permanent(f"the page offers no stream clipjet can read; {UPLOAD_INSTEAD}", code="source_unsupported")
    await check_formats(chosen, settings)
    ids = "+".join(str(f.get("format_id") or "") for f in chosen)
    identity = f"ytdlp:{info.get('extractor_key', '')}:{info.get('webpage_url', url)}:{info.get('id', '')}:{ids}"
    return PageMedia(
        url=fmt["url"], protocol=str(fmt.get("protocol") or ""), format_id=ids, identity=identity,
        duration_sec=info.get("duration"), headers=dict(fmt.get("http_headers") or {}), info=info,
    )


async def download_section(
    page: PageMedia, session: FetchSession, settings: Settings, start_sec: float, end_sec: float, folder: Path
) -> Path:
    """yt-dlp downloads [start_sec, end_sec] of the chosen formats (start_sec a keyframe) into an MP4 in folder."""
    options = {
        **_options(session, settings), "skip_download": False, "outtmpl": {"default": str(folder / "section.%(ext)s")},
        "download_ranges": _yt_dlp().utils.download_range_func(None, [(start_sec, end_sec)]),
        "external_downloader_args": {"ffmpeg_i": session.ffmpeg_input_args(page.url)},
    }
    found = await _run(session, settings, "downloading the section", _download, page.info, options, folder)
    if found is None:
        raise Permanent(f"yt-dlp wrote no file for the section; {UPLOAD_INSTEAD}", code="source_unsupported")
    return found
