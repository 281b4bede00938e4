"""The form of an upload's object key, `uploads/<owner key id>/<UUIDv7>/<safe name>` (without auth
`uploads/<UUIDv7>/<safe name>`): made in one place, checked in one place.

`POST /api/uploads` makes every key with `upload_key`; anything a client names as an upload (a job's
`source.key`, the multipart endpoints' `key`) must match `is_upload_key` before it reaches object storage,
so a key like `uploads/../x`, one with a NUL or one of 2,000 characters is refused as the user's error
instead of becoming an S3 request.
"""

from __future__ import annotations

import re

from shared.jobs.ids import uuid7

UPLOAD_PREFIX = "uploads/"
MAX_NAME_CHARS = 100  # longest file name part of an upload key, characters
DEFAULT_NAME = "source"  # the name part when the client's file name has no safe character
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NAME = rf"[A-Za-z0-9-][A-Za-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}"  # never empty, never starts with "." or "_"
_OWNER = r"[0-9a-f]{12}"  # an API key's public id (shared/jobs/apikeys.py)
UPLOAD_KEY = re.compile(rf"{re.escape(UPLOAD_PREFIX)}(?:{_OWNER}/)?{_UUID}/{_NAME}")
UPLOAD_KEY_FORM = f"{UPLOAD_PREFIX}<key id>/<id>/<name>"  # how error messages describe it
MAX_KEY_CHARS = 1024  # S3's limit on an object key, bytes (keys here are ASCII)
# Any plain key under uploads/ (segments of safe characters, none starting with "."): what a system publishing
# straight to NATS may name; clients of the gateway may name only keys of the UPLOAD_KEY form.
PLAIN_UPLOAD_KEY = re.compile(r"uploads/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)*[A-Za-z0-9_-][A-Za-z0-9._-]*")


def upload_key(filename: str, owner: str | None = None) -> str:
    """A new upload's key: its owner's key id (the key names who may use it), a fresh id, and the file name
    reduced to safe characters."""
    name = _UNSAFE.sub("_", filename).strip("._")[:MAX_NAME_CHARS] or DEFAULT_NAME
    return f"{UPLOAD_PREFIX}{owner}/{uuid7()}/{name}" if owner else f"{UPLOAD_PREFIX}{uuid7()}/{name}"


def is_upload_key(key: str) -> bool:
    """Whether `key` has the form `upload_key` makes (whole string; no `..`, no control characters)."""
    return UPLOAD_KEY.fullmatch(key) is not None


def is_plain_upload_key(key: str) -> bool:
    """Whether `key` is a plain key under uploads/ (never `results/…`, `staging/…`, `..`, `//` or odd characters)."""
    return len(key) <= MAX_KEY_CHARS and PLAIN_UPLOAD_KEY.fullmatch(key) is not None
