"""One place that makes a text safe to show: no signed query strings, credentials or internal object keys.

Every user-visible sink calls it: a job's error message and its events (`shared/db/jobs.py`), the gateway's
job view and error bodies, and every log line (a structlog processor in `shared/runtime/logs.py`). ffmpeg, botocore
and libavformat put the URLs they read in their messages, and those URLs are signed S3 URLs
(`X-Amz-Credential`, `X-Amz-Signature`) or a user's own URL with its credentials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

REDACTED = "<redacted>"
INTERNAL_KEY = "<internal>"
MIN_SECRET_CHARS = 8  # a configured secret shorter than this is not replaced verbatim (it would hit plain words)
MAX_DEPTH = 8  # nesting scrubbed in event data and log fields; deeper values are replaced whole
SECRET_FIELDS = frozenset({  # a field with one of these names (any case) never shows its value
    "api_key", "secret_key", "s3_secret_key", "s3_access_key", "password", "token", "authorization",
    "database_url", "secret", "signature", "credential", "x-amz-signature", "x-amz-credential",
})

# scheme://user:password@host → scheme://<redacted>@host (the userinfo of any URL)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@\"'<>]+@")
# the query string of any URL (signed URLs carry their signature there): https://h/p?a=b → https://h/p?<redacted>
_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#\"'<>]*)\?[^\s\"'<>]+")
# signature parameters outside a URL (a query string printed alone, a header dump)
_AMZ_PARAM = re.compile(r"(?i)\bX-Amz-(?:Signature|Credential|Security-Token|Algorithm|Date|Expires|SignedHeaders)"
                        r"=[^\s&\"'<>]*")
# Authorization headers and bearer/basic tokens
_AUTH_HEADER = re.compile(r"(?i)\b(authorization|proxy-authorization)\s*[:=]\s*[^\r\n\"'}]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/\-]+=*")
# AWS SigV4 credential scope (access key / date / region / s3 / aws4_request) however it is quoted
_CREDENTIAL_SCOPE = re.compile(r"\b[A-Za-z0-9]{4,128}/\d{8}/[a-z0-9\-]+/s3/aws4_request\b")
# internal object keys: where a stage stages its work and where results live (a job id is shown on its own)
_INTERNAL_KEY = re.compile(r"(?<![\w\-])(?:staging|results)/[^\s\"'<>,;)]+")
# what each pattern above cannot match without (lower case): an ASCII text holding none of them skips the patterns
_PATTERN_MARKERS = ("://", "x-amz-", "authorization", "bearer", "/s3/aws4_request", "staging/", "results/")
_known_secrets: set[str] = set()  # this process's configured secrets, replaced wherever they appear


def remember_secrets(s3_secret_key: str, database_url: str) -> None:
    """Make `scrub` hide this process's S3 secret key and database password wherever they appear."""
    password = urlsplit(database_url).password or ""
    _known_secrets.update(s for s in (s3_secret_key, password) if len(s) >= MIN_SECRET_CHARS)


def remember_secret(secret: str) -> None:
    """Make `scrub` hide one more configured secret (e.g. ASR_HOSTED_KEY) wherever it appears."""
    if len(secret) >= MIN_SECRET_CHARS:
        _known_secrets.add(secret)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without signed query strings, URL credentials, tokens, internal object keys, this process's
    remembered secrets and the `secrets` given."""
    if not text:
        return text
    if _may_hold_pattern(text):
        text = _patterns_scrubbed(text)
    for secret in (*_known_secrets, *secrets):
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, REDACTED)
    return text


def _may_hold_pattern(text: str) -> bool:
    """Whether `text` holds something one of the patterns needs (substring checks, far cheaper than the seven
    patterns: most log fields are ids, names and numbers that hold none of it)."""
    if not text.isascii():
        return True  # the patterns ignore case beyond ASCII too (long s, Kelvin sign): they decide
    lowered = text.lower()
    return any(marker in lowered for marker in _PATTERN_MARKERS)


def _patterns_scrubbed(text: str) -> str:
    text = _QUERY.sub(rf"\1?{REDACTED}", text)
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _AMZ_PARAM.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(rf"\1: {REDACTED}", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    text = _CREDENTIAL_SCOPE.sub(REDACTED, text)
    return _INTERNAL_KEY.sub(INTERNAL_KEY, text)


def scrub_value(value: Any, secrets: tuple[str, ...] = (), depth: int = 0) -> Any:
    """A JSON-like value (event data, a log field) with every string scrubbed and secret-named fields hidden."""
    if isinstance(value, str):
        return scrub(value, secrets)
    if depth >= MAX_DEPTH:
        return REDACTED if isinstance(value, (Mapping, list, tuple)) else value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if str(k).lower() in SECRET_FIELDS else scrub_value(v, secrets, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_value(v, secrets, depth + 1) for v in value]
    return value
