"""Webhook signatures: `Clipjet-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

The receiver recomputes the HMAC over the raw body with its key's webhook secret, compares in constant time and
refuses a `t` far from its clock (a replayed old delivery). `verify` is what the README's receiver does."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Clipjet-Signature"
EVENT_ID_HEADER = "Clipjet-Event-Id"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # 256 random bits
DEFAULT_TOLERANCE_SEC = 300.0  # a receiver refuses signatures older (or newer) than this, s


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def signature(secret: str, body: bytes, at: int) -> str:
    """The header value for `body` signed at unix time `at`."""
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_sec: float = DEFAULT_TOLERANCE_SEC,
           now: float | None = None) -> bool:
    """Whether `header` signs `body` with `secret`, within `tolerance_sec` of `now`."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - at) > tolerance_sec:
        return False
    expected = signature(secret, body, at).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def event_id(job_id: str, status: str) -> str:
    """The id a receiver de-duplicates on: one per job end, the same on every try."""
    return f"{job_id}:{status}"
