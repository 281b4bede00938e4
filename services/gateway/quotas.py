"""The 429 `quota_exceeded` answer: which of a key's quotas it reached, and when to try again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.db import keys
from shared.errors import RetryLater

IN_FLIGHT_RETRY_AFTER_SEC = 30  # a key at its in-flight quota is told to try again after this long
GIB = 1024**3


class QuotaExceeded(RetryLater):
    """The key is at one of its quotas (`clipjet keys create` sets them; GET /api/usage shows them)."""

    code = "quota_exceeded"
    http_status = 429


def _until_next_utc_day() -> int:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, int((midnight - now).total_seconds()) + 1)


def quota_exceeded(quota: str, quotas: keys.Quotas) -> QuotaExceeded:
    """The answer for `quota` (jobs_in_flight, jobs_per_day, source_seconds_per_day, upload_bytes_per_day)."""
    limits = {"jobs_in_flight": f"{quotas.max_in_flight} jobs queued or processing at once",
              "jobs_per_day": f"{quotas.max_jobs_per_day} jobs per UTC day",
              "source_seconds_per_day": f"{quotas.max_source_seconds_per_day:g} clip seconds per UTC day",
              "upload_bytes_per_day": f"upload slots for {quotas.max_upload_bytes_per_day / GIB:g} GiB per UTC day"}
    retry_after = IN_FLIGHT_RETRY_AFTER_SEC if quota == "jobs_in_flight" else _until_next_utc_day()
    return QuotaExceeded(
        f"quota {quota} reached: this API key may have {limits[quota]}; GET /api/usage shows its use",
        retry_after_sec=retry_after,
    )


def upload_quota_exceeded(quotas: keys.Quotas) -> QuotaExceeded:
    return quota_exceeded("upload_bytes_per_day", quotas)
