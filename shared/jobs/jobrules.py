"""The rules every clip request obeys on every way in, with the same error codes on each.

Two ways in: the gateway's `POST /api/jobs`, and a `ClipJobMessage` another system publishes straight onto
`<prefix>.fetch.<priority>` (the entry stage checks it before any work). Per-field bounds (startSec >= 0,
endSec > 0, the id's form) are `msgspec.Meta` on the structs, so decoding enforces them on both ways;
`refusal_for_field` turns such a decoding failure into the code the gateway gives. The rules across fields
(the range, MAX_CLIP_SECONDS, which objects an upload source may name, the URL's form) are `check_clip`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from shared.asr.languages import is_language, shown
from shared.errors import BadRequest, FetchRefused
from shared.jobs.contracts import PRIORITIES, ClipSpec, Priority, UploadSource, UrlSource, YoutubeSource
from shared.net.netguard import split_url
from shared.net.ytdlp import check_page_url
from shared.settings import Settings
from shared.storage.upload_keys import UPLOAD_PREFIX, is_plain_upload_key

_DECODE_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_SOURCE_TYPE_FIELD = "source.type"
_TRANSLATE_FIELD = "subs.translate"  # also a batch clip's: clips[0].subs.translate
_LANG_FIELD = "subs.lang"
# A bound (msgspec.Meta) broken by a field: the code the gateway always gave for it.
_BOUND_CODES = {"startSec": "start_negative", "endSec": "end_before_start"}
_BOUND_MARKS = (">", "<")  # msgspec's bound messages: "Expected `float` >= 0.0"
_REFRAME_FIELD = re.compile(r"(?:^|\.)reframe(?:\.|$)")  # `reframe`, `reframe.aspect`, `clips[0].reframe.mode`
REFRAME_HINT = "reframe takes aspect 9:16, 1:1 or 4:5, mode crop or pad, and focusX from 0 to 1"
MAX_KEPT_REQUEST_BYTES = 64 * 1024  # a refused message over this size is not kept in its job row, bytes
_NUL_ESCAPE = b"\\u0000"  # PostgreSQL's jsonb cannot hold NUL characters
_encoder = msgspec.json.Encoder()


def check_clip(spec: ClipSpec, settings: Settings) -> None:
    """Refuse what no worker could do (raises BadRequest with a stable code and the field)."""
    if spec.start_sec < 0:
        raise BadRequest("startSec must be 0 or more", code="start_negative", field="startSec")
    if spec.end_sec <= spec.start_sec:
        raise BadRequest("endSec must be greater than startSec", code="end_before_start", field="endSec")
    if spec.end_sec - spec.start_sec > settings.max_clip_seconds:
        raise BadRequest(
            f"the clip is {spec.end_sec - spec.start_sec:g} s; the longest allowed is {settings.max_clip_seconds:g} s",
            code="clip_too_long", field="endSec",
        )
    check_metadata(spec, settings)
    check_subtitles(spec)
    if spec.poster is not None and spec.poster.at_sec is not None and \
            spec.poster.at_sec >= spec.end_sec - spec.start_sec:
        raise BadRequest(
            f"poster.atSec is {spec.poster.at_sec:g} s, in clip time (from its first frame); the clip lasts "
            f"{spec.end_sec - spec.start_sec:g} s", code="poster_outside_clip", field="poster.atSec",
        )
    match spec.source:
        case UploadSource(key=key):
            check_upload_key(key)
        case UrlSource(url=url):  # the form only: addresses are checked on every hop by the fetcher
            _check_form(lambda: split_url(url))
        case YoutubeSource(url=url):  # the page's site is checked again by the fetcher
            _check_form(lambda: check_page_url(url, settings))


def check_subtitles(spec: ClipSpec) -> None:
    """`subs.translate` only with subtitles made (enabled or burned in: else it would be ignored, and still change
    the request's fingerprint); `subs.lang` a language the transcriber knows, or auto."""
    subs = spec.subs
    if subs.translate is not None and not (subs.enabled or subs.burn_in):
        raise BadRequest(
            "subs.translate is set but no subtitles are made: set subs.enabled to true, or leave subs.translate out",
            code="translate_needs_subtitles", field=_TRANSLATE_FIELD,
        )
    if not is_language(subs.lang):
        raise BadRequest(
            f"subs.lang {shown(subs.lang)} is not a Whisper language code (e.g. en, de, fr) nor 'auto'",
            code="language_unknown", field=_LANG_FIELD,
        )


def check_metadata(spec: ClipSpec, settings: Settings) -> None:
    """The client's reference stays small: at most MAX_METADATA_BYTES, JSON-encoded."""
    if spec.metadata is None:
        return
    encoded = _encoder.encode(spec.metadata)
    if _NUL_ESCAPE in encoded:  # PostgreSQL could not store it
        raise BadRequest("metadata may not contain NUL characters (\\u0000)", code="invalid_field", field="metadata")
    size = len(encoded)
    if size > settings.max_metadata_bytes:
        raise BadRequest(
            f"metadata is {size} bytes as JSON; the largest accepted is {settings.max_metadata_bytes}: keep a "
            f"reference (an id, a few fields) there, not the data itself",
            code="invalid_field", field="metadata",
        )


def check_upload_key(key: str) -> None:
    """An upload source names an object under `uploads/` in a plain form: never `results/…`, another job's
    `staging/…`, `..` segments, or characters upload slots never make (raises `upload_not_found`)."""
    if not is_plain_upload_key(key):
        raise BadRequest(
            f"{key[:200]!r} is not an upload key; get a slot from POST /api/uploads, PUT the file, and name the "
            f"key it gave (under {UPLOAD_PREFIX})",
            code="upload_not_found", field="source.key",
        )


def refusal_for_field(field: str | None, message: str) -> BadRequest:
    """The refusal of a request whose `field` failed decoding with msgspec's `message` (no " - at …" part)."""
    if field == _SOURCE_TYPE_FIELD:
        return BadRequest(f"{message}: source.type must be one of upload, url, youtube",
                          code="unknown_source_type", field=field)
    if field is not None and (field == _TRANSLATE_FIELD or field.endswith(f".{_TRANSLATE_FIELD}")):
        return BadRequest(f"{message}: {field} must be \"en\" (Whisper translates only into English) or left out",
                          code="translate_unsupported", field=field)
    if field in _BOUND_CODES and any(mark in message for mark in _BOUND_MARKS):
        return BadRequest(f"{field}: {message}", code=_BOUND_CODES[field], field=field)
    if field is not None and _REFRAME_FIELD.search(field):
        return BadRequest(f"{field}: {message}; {REFRAME_HINT}", code="invalid_reframe", field=field)
    return BadRequest(f"{message} (at {field})" if field else message, code="invalid_field", field=field)


def refusal_for_decode_error(exc: msgspec.DecodeError) -> BadRequest:
    """The refusal of a bus message that did not decode: the code the gateway gives for the same body."""
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):  # not JSON at all
        return BadRequest(f"the message is not valid JSON: {text}", code="malformed_json")
    found = _DECODE_PATH.search(text)
    if found is None:
        return BadRequest(text, code="invalid_field")
    return refusal_for_field(found["path"] or None, text[: found.start()])


def refused_request(data: bytes) -> tuple[dict[str, Any], Priority]:
    """What the job row of a refused message keeps: the request as it came (a JSON object within
    MAX_KEPT_REQUEST_BYTES; a stage message's `job`), else {}; and its priority when it names one, else normal."""
    kept: Any = {}
    if len(data) <= MAX_KEPT_REQUEST_BYTES and _NUL_ESCAPE not in data:
        try:
            kept = msgspec.json.decode(data)
        except msgspec.DecodeError:
            kept = {}
    if isinstance(kept, dict) and isinstance(kept.get("job"), dict):
        kept = kept["job"]
    if not isinstance(kept, dict):
        kept = {}
    priority = kept.get("priority")
    return kept, priority if priority in PRIORITIES else "normal"


def _check_form(check: Callable[[], object]) -> None:
    try:
        check()
    except FetchRefused as exc:
        raise BadRequest(exc.message, code=exc.code, field="source.url") from exc
