"""UUIDv7 job ids: the creation time sits in the id, so a lookup by id prunes to one day partition."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

_VERSION_7 = 7


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= _VERSION_7 << 76
    value |= ((rand >> 64) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b: 62 bits
    return uuid.UUID(int=value)


def created_at_of(job_id: uuid.UUID) -> datetime | None:
    """The creation time carried by a UUIDv7; None for other versions and for timestamps no datetime can hold
    (a 48-bit millisecond count reaches the year 10889: such an id is treated like one without a time)."""
    if job_id.version != _VERSION_7:
        return None
    try:
        return datetime.fromtimestamp((job_id.int >> 80) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def parse_job_id(text: str) -> uuid.UUID | None:
    """The UUID in `text`, or None when it is not one."""
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None
