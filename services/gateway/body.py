"""Strict JSON request bodies: a JSON content type, a body, exact types, no unknown fields.

Litestar converts a body into its struct leniently (`"startSec": "1"` becomes 1.0) and ignores unknown fields
(a typo like `precison` silently runs `auto`). Each route with a body runs `strict_json(T)` first, as its
`before_request` hook: it decodes the body strictly, refuses with a stable code what the lenient conversion
would have let through, and leaves the value it made in the request's scope (`checked_body`) for the handler.
A body that passes converts to the same value both ways.

Refusals: no JSON content type → 415 `unsupported_media_type` (a cross-site form can send `text/plain` but
not `application/json` without a CORS preflight); empty, invalid or too deeply nested → 400 `malformed_json`;
over GATEWAY_MAX_BODY_BYTES → 413 `body_too_large` (Litestar's limit); a wrong type, a missing or an unknown
field → 422 `invalid_field` naming the field (`source.type` → `unknown_source_type`; a negative `startSec` →
`start_negative`, as shared/jobs/jobrules.py gives on both ways in).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request

from shared.errors import BadRequest, ClipError, MalformedJson
from shared.jobs.jobrules import refusal_for_field

JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9.!#$&^_-]+\+)?json", re.IGNORECASE)  # application/json, */*+json
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
_ERROR_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")
_decoder = msgspec.json.Decoder()
BODY_SCOPE_KEY = "clipjet.body"  # the strictly decoded body, for the handler

BodyHook = Callable[[Request[Any, Any, Any]], Awaitable[None]]


class BodyTooLarge(ClipError):
    """The request, or the job message it makes, is larger than the gateway or the queue takes."""

    code = "body_too_large"
    http_status = 413


class UnsupportedMediaType(ClipError):
    """The body is not declared as JSON."""

    code = "unsupported_media_type"
    http_status = 415


def strict_json(target: Any, *, optional: bool = False) -> BodyHook:
    """A `before_request` hook that refuses a body unless it decodes strictly into `target`.

    `optional`: an empty body (no JSON at all) is allowed; the handler's default applies.
    """

    async def check(request: Request[Any, Any, Any]) -> None:
        raw = await json_body(request, optional=optional)
        if raw is not None:
            request.scope[BODY_SCOPE_KEY] = decode_strict(raw, target)  # type: ignore[literal-required]

    return check


async def json_body(request: Request[Any, Any, Any], *, optional: bool = False) -> bytes | None:
    """The raw body once it is known to be declared as JSON (None: empty and `optional`)."""
    raw = await request.body()  # over request_max_body_size: 413 body_too_large
    return declared_json(raw, request.headers.get("content-type"), optional=optional)


def declared_json(raw: bytes, content_type: str | None, *, optional: bool = False) -> bytes | None:
    """`json_body` of a body already read and its Content-Type header (None: none)."""
    if not raw.strip():
        if optional:
            return None
        raise MalformedJson("the body is empty; send a JSON object with Content-Type: application/json")
    check_content_type(content_type)
    return raw


def checked_body(request: Request[Any, Any, Any]) -> Any:
    """The body as the route's strict check decoded it (its handler uses this value: the body is decoded once)."""
    return request.scope[BODY_SCOPE_KEY]  # type: ignore[literal-required]


def check_content_type(header: str | None) -> None:
    """Only `application/json` or `application/<x>+json`, in UTF-8 when a charset is named."""
    media_type, *params = (header or "").split(";")
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in params
                    if p.strip().lower().startswith("charset=")), None)
    if JSON_MEDIA_TYPE.fullmatch(media_type.strip()) is None:
        shown = media_type.strip()[:80] or "none"
        raise UnsupportedMediaType(
            f"the body must be JSON sent with Content-Type: application/json, not {shown!r}"
        )
    if charset is not None and charset not in UTF8_CHARSETS:
        raise UnsupportedMediaType(f"JSON bodies are UTF-8; the charset {charset[:40]!r} is not accepted")


def decode_strict(raw: bytes, target: Any) -> Any:
    """`raw` as `target`: exact JSON types (no "1" for a number), every field known; a coded error otherwise."""
    return convert_strict(decode_json(raw), target)


def decode_json(raw: bytes) -> Any:
    """`raw` as plain JSON values; 400 malformed_json when it is not JSON."""
    try:
        return _decoder.decode(raw)
    except RecursionError as exc:
        raise MalformedJson("the body is nested too deeply; send a flat JSON object") from exc
    except msgspec.DecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from exc


def convert_strict(value: Any, target: Any) -> Any:
    """Decoded JSON `value` as `target`: exact types, every field known; a coded error otherwise."""
    try:
        result = msgspec.convert(value, target, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from exc
    unknown = unknown_field(value, result)
    if unknown is not None:
        raise BadRequest(
            f"unknown field {unknown!r}: check its spelling against the API schema (/schema)",
            code="invalid_field", field=unknown,
        )
    return result


def unknown_field(raw: Any, value: Any, path: str = "") -> str | None:
    """The path of the first field in the decoded JSON `raw` that the struct `value` has no place for."""
    if isinstance(value, msgspec.Struct) and isinstance(raw, dict):
        kind = type(value)
        wire_names = dict(zip(kind.__struct_encode_fields__, kind.__struct_fields__, strict=True))
        tag_field = kind.__struct_config__.tag_field
        for key, item in raw.items():
            where = f"{path}.{key}" if path else str(key)
            if key == tag_field:
                continue
            if key not in wire_names:
                return where
            found = unknown_field(item, getattr(value, wire_names[key]), where)
            if found is not None:
                return found
    elif isinstance(value, list) and isinstance(raw, list):
        for index, (raw_item, item) in enumerate(zip(raw, value, strict=False)):
            found = unknown_field(raw_item, item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _invalid(message: str) -> BadRequest:
    """msgspec's message as the coded error the job rules give for that field (`$.source.url` → `source.url`)."""
    where = _ERROR_PATH.search(message)
    path = where.group("path") if where else ""
    missing = _MISSING_FIELD.match(message)
    if missing:
        path = f"{path}.{missing.group('name')}" if path else missing.group("name")
    return refusal_for_field(path or None, _ERROR_PATH.sub("", message))
