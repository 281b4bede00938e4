"""Hosted speech recognition over the OpenAI-compatible `POST /v1/audio/transcriptions` API (ASR_HOSTED_URL);
`subs.translate` uses `POST /v1/audio/translations` (English out; no `language` field, no word timestamps).

Only the clip's own audio is sent: the 16 kHz mono samples the local engine would have read, compressed
(FLAC, or Ogg Opus when ASR_HOSTED_AUDIO_FORMAT=opus or when the FLAC is over ASR_HOSTED_MAX_UPLOAD_MB).
The form asks for `verbose_json` with word and segment timestamps; words come back with their times, and a
word's probability is its segment's exp(avg_logprob) (1.0 where the server gives none). An answer without words
(translations: OpenAI gives segments only) has each segment's text split into words, the segment's time shared
among them by their length.

The URL is an operator setting, so it is NOT put through the SSRF guard (shared/net/netguard.py): an in-cluster
server on a private address is allowed (a key sent over http:// to any other host is warned about at start).
Errors: no answer, 429 or 5xx → HostedAsrUnavailable; another 4xx, an answer over ASR_HOSTED_MAX_REPLY_MB or one
that is not a transcription → HostedAsrRefused (both with stable codes; the job's error names the HTTP status
only, the provider's text is logged).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import numpy as np

from shared.asr.audio import SAMPLE_RATE_HZ
from shared.asr.base import ENGLISH, Transcript
from shared.asr.languages import language_code
from shared.errors import HostedAsrRefused, HostedAsrUnavailable
from shared.runtime.logs import get_logger
from shared.runtime.scrub import remember_secret
from shared.settings import Settings
from shared.subtitles.words import Word

log = get_logger("asr")
HOSTED = "hosted"
TRANSCRIPTIONS_PATH = "/audio/transcriptions"
TRANSLATIONS_PATH = "/audio/translations"
MIB = 1024 * 1024
ERROR_BODY_BYTES = 2048  # of an error answer, read (for the log) at most this much
LOCAL_NAME_SUFFIXES = (".local", ".internal", ".svc", ".localhost", ".lan", ".home.arpa")  # names not on the internet
OPUS_BITRATE = "32k"
UPLOAD_FORMATS = {  # name → (ffmpeg output args, file name, content type)
    "flac": (["-c:a", "flac", "-sample_fmt", "s16", "-f", "flac"], "clip.flac", "audio/flac"),
    "opus": (["-c:a", "libopus", "-b:a", OPUS_BITRATE, "-application", "voip", "-f", "ogg"], "clip.ogg", "audio/ogg"),
}


def transcriptions_url(base: str, endpoint: str = TRANSCRIPTIONS_PATH) -> str:
    """ASR_HOSTED_URL → the endpoint: `…/v1` gets `/audio/transcriptions`, a bare host `/v1/audio/transcriptions`,
    a URL already naming the endpoint is used as it is. `endpoint`: TRANSLATIONS_PATH for the translations
    endpoint beside it (a URL naming `…/audio/transcriptions` gets `…/audio/translations`)."""
    url = base.rstrip("/")
    parts = urlsplit(url)
    path = parts.path
    if path.endswith(TRANSCRIPTIONS_PATH):  # its query, if any, kept
        return urlunsplit(parts._replace(path=path[: -len(TRANSCRIPTIONS_PATH)] + endpoint))
    if path.endswith("/v1"):
        return url + endpoint
    return url + "/v1" + endpoint


def translations_url(base: str) -> str:
    """ASR_HOSTED_URL → its `/v1/audio/translations` endpoint (as `transcriptions_url`)."""
    return transcriptions_url(base, TRANSLATIONS_PATH)


async def encode_audio(audio: np.ndarray, fmt: str) -> bytes:
    """16 kHz mono float32 samples → a FLAC or Ogg Opus file in memory (ffmpeg through pipes)."""
    args, _, _ = UPLOAD_FORMATS[fmt]
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(SAMPLE_RATE_HZ), "-ac", "1",
        "-i", "pipe:0", *args, "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not encode the clip's audio as {fmt}: {err.decode(errors='replace')[-300:]}")
    return out


class _HostedWord(msgspec.Struct):
    word: str
    start: float
    end: float
    probability: float | None = None


class _HostedSegment(msgspec.Struct):
    start: float = 0.0
    end: float = 0.0
    text: str = ""
    avg_logprob: float | None = None
    words: list[_HostedWord] | None = None


class _HostedAnswer(msgspec.Struct):
    text: str = ""
    language: str = ""
    words: list[_HostedWord] | None = None
    segments: list[_HostedSegment] | None = None


def words_of(answer: _HostedAnswer, audio_sec: float) -> list[Word]:
    """The answer's words (top-level `words`, else each segment's), times within the clip's audio, sorted."""
    segments = answer.segments or []
    raw = answer.words if answer.words is not None else [w for s in segments for w in s.words or []]
    if not raw:
        raw = [w for s in segments for w in segment_words(s)]

    def probability(word: _HostedWord) -> float:
        if word.probability is not None:
            return float(word.probability)
        for segment in segments:
            if segment.start <= word.start < segment.end and segment.avg_logprob is not None:
                return min(1.0, math.exp(segment.avg_logprob))
        return 1.0

    def clamp(t: float) -> float:
        return round(min(max(0.0, float(t)), audio_sec), 3)

    words = [Word(w.word.strip(), clamp(w.start), clamp(max(w.start, w.end)), round(probability(w), 4))
             for w in raw if w.word.strip()]
    return sorted(words, key=lambda w: w.start)


def segment_words(segment: _HostedSegment) -> list[_HostedWord]:
    """A segment without word times: its text's words, the segment's time shared by their length (+1 each)."""
    texts = segment.text.split()
    if not texts:
        return []
    span = max(0.0, segment.end - segment.start)
    total = sum(len(t) + 1 for t in texts)
    words, at = [], segment.start
    for text in texts:
        end = at + span * (len(text) + 1) / total
        words.append(_HostedWord(text, round(at, 3), round(end, 3)))
        at = end
    return words


async def read_capped(reply: httpx.Response, cap: int) -> bytes | None:
    """The reply's body, or None once it is over `cap` bytes (a misbehaving server cannot fill the memory);
    an error body is cut at `cap` instead (it is only logged)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in reply.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap] if reply.status_code != 200 else None
    return b"".join(chunks)


def key_sent_in_clear(settings: Settings) -> bool:
    """Whether the bearer key would cross a network in cleartext: an http:// ASR_HOSTED_URL to a host that is
    neither loopback nor private (an IP outside those ranges, or a DNS name that is not cluster- or site-local)."""
    parts = urlsplit(settings.asr_hosted_url)
    if not settings.asr_hosted_key or parts.scheme != "http":
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "." in host and host != "localhost" and not host.endswith(LOCAL_NAME_SUFFIXES)
    return ip.is_global


def warn_if_key_in_clear(settings: Settings) -> None:
    """At the transcriber's start: a warning when `key_sent_in_clear`."""
    if key_sent_in_clear(settings):
        host = urlsplit(settings.asr_hosted_url).hostname
        log.warning("asr_hosted_key_cleartext", host=host,
                    message=f"ASR_HOSTED_URL is http:// to {host}, which is not a loopback or private address: the "
                    "ASR_HOSTED_KEY is sent in cleartext. Use https://.")


@dataclass
class HostedAsr:
    """The client of one hosted API (settings ASR_HOSTED_*)."""

    settings: Settings

    def __post_init__(self) -> None:
        self.url = transcriptions_url(self.settings.asr_hosted_url)
        self.translations_url = translations_url(self.settings.asr_hosted_url)
        remember_secret(self.settings.asr_hosted_key)  # never shown in logs or job errors

    async def upload_body(self, audio: np.ndarray) -> tuple[bytes, str, str]:
        """The file to send: the configured format, or Opus when FLAC would be over the size cap."""
        fmt = self.settings.asr_hosted_audio_format
        body = await encode_audio(audio, fmt)
        if len(body) > self.settings.asr_hosted_max_upload_mb * MIB and fmt != "opus":
            fmt, body = "opus", await encode_audio(audio, "opus")
        if len(body) > self.settings.asr_hosted_max_upload_mb * MIB:
            raise HostedAsrRefused(f"the clip's audio is {len(body) / MIB:.1f} MiB even as Opus, over "
                                   f"ASR_HOSTED_MAX_UPLOAD_MB {self.settings.asr_hosted_max_upload_mb}")
        _, name, content_type = UPLOAD_FORMATS[fmt]
        return body, name, content_type

    async def transcribe(self, audio: np.ndarray, language: str | None, *, translate: bool = False) -> Transcript:
        """The words of `audio` (16 kHz mono float32) from the hosted API; `language` None: the API detects it.

        `translate`: English words from the translations endpoint, which takes no language and says none but
        English: the transcript's (source) language is then `language`, "" when None (unknown)."""
        body, name, content_type = await self.upload_body(audio)
        form: dict[str, object] = {"model": self.settings.asr_hosted_model, "response_format": "verbose_json"}
        if not translate:
            form["timestamp_granularities[]"] = ["word", "segment"]
            if language:
                form["language"] = language
        url = self.translations_url if translate else self.url
        headers = {"Authorization": f"Bearer {self.settings.asr_hosted_key}"} if self.settings.asr_hosted_key else {}
        try:
            async with httpx.AsyncClient(timeout=self.settings.asr_hosted_timeout_sec, trust_env=False) as client, \
                    client.stream("POST", url, data=form, files={"file": (name, body, content_type)},
                                  headers=headers) as reply:
                status = reply.status_code
                cap = int(self.settings.asr_hosted_max_reply_mb * MIB) if status == 200 else ERROR_BODY_BYTES
                content = await read_capped(reply, cap)
        except httpx.HTTPError as exc:
            raise HostedAsrUnavailable(f"the hosted speech API did not answer: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            # the provider's words go to the log only: a job's error (shown to its submitter) names the status
            log.warning("asr_hosted_error", status=status, body=(content or b"").decode(errors="replace")[:500])
            if status == 429 or status >= 500:
                raise HostedAsrUnavailable(f"the hosted speech API answered {status}")
            raise HostedAsrRefused(f"the hosted speech API refused the clip ({status})")
        if content is None:
            raise HostedAsrRefused(f"the hosted speech API's answer is over ASR_HOSTED_MAX_REPLY_MB "
                                   f"{self.settings.asr_hosted_max_reply_mb}")
        try:
            answer = msgspec.json.decode(content, type=_HostedAnswer)
        except msgspec.DecodeError as exc:
            raise HostedAsrRefused(f"the hosted speech API's answer is no verbose_json transcription: {exc}") from exc
        detected = (language or "") if translate else language_code(answer.language) or language or ""
        words = words_of(answer, len(audio) / SAMPLE_RATE_HZ)
        log.info("asr_hosted", bytes=len(body), format=name, words=len(words), language=detected, translate=translate)
        return Transcript(language=detected, words=words, device=HOSTED, engine=HOSTED,
                          translated_to=ENGLISH if translate else "")
