"""What makes one local stack's data folder its own: a random id and a random S3 secret, kept in the folder.

The id names the stack's PostgreSQL schema (``clipjet_stack_<id>``), so a new data folder gets a new, empty
schema and never touches (nor drops) another folder's tables or a schema someone else made in a shared
PostgreSQL. The S3 secret replaces a constant default: the local SeaweedFS accepts only this folder's secret.
Both are in ``<data_dir>/stack-identity.json``, readable by its owner only (mode 0600).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

IDENTITY_FILE = "stack-identity.json"
IDENTITY_FILE_MODE = 0o600  # it holds the S3 secret
STACK_ID_BYTES = 6  # 12 hex digits: two data folders never share a schema
S3_SECRET_BYTES = 30  # 40 URL-safe characters
SCHEMA_PREFIX = "clipjet_stack_"
STACK_ID_PATTERN = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class StackIdentity:
    stack_id: str
    s3_secret_key: str

    @property
    def schema(self) -> str:
        return SCHEMA_PREFIX + self.stack_id


def _read(path: Path) -> StackIdentity | None:
    try:
        data = json.loads(path.read_text())
        identity = StackIdentity(str(data["stackId"]), str(data["s3SecretKey"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not STACK_ID_PATTERN.fullmatch(identity.stack_id) or not identity.s3_secret_key:
        return None
    return identity


def stack_identity(data_dir: Path) -> StackIdentity:
    """This data folder's identity: read from its file, or made (random) and written on first use.

    A file that is unreadable or altered is replaced by a new identity (a new, empty schema; nothing dropped).
    The file is (re)set to mode 0600 either way."""
    path = data_dir / IDENTITY_FILE
    identity = _read(path)
    if identity is None:
        identity = StackIdentity(secrets.token_hex(STACK_ID_BYTES), secrets.token_urlsafe(S3_SECRET_BYTES))
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, IDENTITY_FILE_MODE)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), IDENTITY_FILE_MODE)
            json.dump({"stackId": identity.stack_id, "s3SecretKey": identity.s3_secret_key}, out)
        partial.replace(path)
    path.chmod(IDENTITY_FILE_MODE)
    return identity
