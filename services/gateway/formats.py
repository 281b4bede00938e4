"""The real formats of what clients name in paths, queries and bodies: checked before any dependency is called.

A malformed value is the client's error (a 4xx with a stable code), never an S3 or PostgreSQL request that
fails: such failures must not reach a circuit breaker or a 500.
"""

from __future__ import annotations

import re

from shared.errors import BadRequest
from shared.storage.upload_keys import UPLOAD_KEY_FORM, is_upload_key

MAX_UPLOAD_ID_CHARS = 1024  # longest multipart upload id accepted, characters (S3 ids are opaque tokens)
MAX_CONTENT_TYPE_CHARS = 255  # longest upload Content-Type accepted, characters
MAX_SHOWN_CHARS = 80  # a client's value is quoted in an error message up to this many characters
# S3 upload ids are opaque URL-safe tokens (SeaweedFS: hex and "_"; AWS: base64url-like with "." and "-")
UPLOAD_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_UPLOAD_ID_CHARS}}}")
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # RFC 9110 token
_QUOTED = r'"[^"\\\x00-\x1f\x7f]*"'
# RFC 9110 media type: type/subtype, then optional `; name=value` parameters (no line breaks, no controls)
CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")


def shown(value: str) -> str:
    """A client's value, shortened, for an error message."""
    return repr(value[:MAX_SHOWN_CHARS] + ("…" if len(value) > MAX_SHOWN_CHARS else ""))


def require_upload_key(key: str, field: str) -> None:
    """422 `upload_not_found` unless `key` has the form POST /api/uploads gives (no upload can be elsewhere)."""
    if not is_upload_key(key):
        raise BadRequest(
            f"{shown(key)} is not an upload key: keys look like {UPLOAD_KEY_FORM}, exactly as POST /api/uploads "
            "returned them", code="upload_not_found", field=field,
        )


def require_upload_id(upload_id: str, field: str) -> None:
    """422 `invalid_field` unless `upload_id` looks like a multipart upload id."""
    if UPLOAD_ID.fullmatch(upload_id) is None:
        raise BadRequest(
            f"{shown(upload_id)} is not a multipart upload id; send the uploadId POST /api/uploads returned",
            code="invalid_field", field=field,
        )


def require_content_type(content_type: str, field: str) -> None:
    """422 `invalid_field` unless `content_type` is a media type such as `video/mp4` (it becomes a header)."""
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or CONTENT_TYPE.fullmatch(content_type) is None:
        raise BadRequest(
            f"{shown(content_type)} is not a media type; send one like video/mp4", code="invalid_field", field=field,
        )
