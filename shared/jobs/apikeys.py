"""API key strings: `cj_<id>_<secret>`. The id is public (it names the key in logs, listings and upload paths);
only a SHA-256 of the secret is stored. Secrets are 256 random bits, so a fast hash is as good as a slow one."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "cj_"
ID_BYTES = 6  # 12 hex characters: the key's public id
SECRET_BYTES = 32  # 256 bits of secret
_KEY_FORMAT = re.compile(r"^cj_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"clipjet: no such key").digest()


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `token` is shown to its owner once; the rest is stored."""

    key_id: str
    token: str
    secret_sha256: bytes


def new_key() -> NewKey:
    key_id = secrets.token_hex(ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return NewKey(key_id, f"{KEY_PREFIX}{key_id}_{secret}", secret_hash(secret))


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    match = _KEY_FORMAT.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(secret: str, stored: bytes | None) -> bool:
    """Constant-time comparison; an unknown id is compared against a dummy hash so both take the same time."""
    ok = hmac.compare_digest(secret_hash(secret), stored if stored is not None else _DUMMY_HASH)
    return ok and stored is not None
