"""A job as a client sees it (`GET /api/jobs/{id}`): built from its row in one place, for the gateway and for the
notifier, which POSTs the same view to the job's webhook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from shared.db.jobs import result_files
from shared.jobs.contracts import ClipResult, JobRequest, JobView, ResultUrls, WebhookState
from shared.runtime.resources import Resources
from shared.runtime.scrub import scrub

Signer = Callable[[str, str], Awaitable[tuple[str, int]]]  # (key, download name) → signed URL, seconds it stays valid


async def job_view(res: Resources, row: Any, sign: Signer | None = None) -> JobView:
    """What a client sees of a job row (signed URLs of its files once done). `sign`: how a URL is signed (the
    gateway reuses recent ones, services/gateway/signed.py); by default a new one valid SIGNED_URL_TTL_SEC."""
    result = msgspec.convert(row["result"], ClipResult) if row["result"] else None
    urls = None
    if row["status"] == "done" and row["result_video_key"]:
        signer = sign or _fresh_signer(res)
        files: dict[str, str] = {}
        lasts: list[int] = []
        for role, key in result_files(row).items():  # a content-hashed key ends with the file's download name
            files[role], valid_sec = await signer(key, key.rsplit("/", 1)[-1])
            lasts.append(valid_sec)
        urls = ResultUrls.of(files, min(lasts))
    request = request_of(row["request"])
    return JobView(
        id=str(row["id"]), status=row["status"], priority=row["priority"], stage=row["stage"],
        progress=round(float(row["progress"]), 4), attempts=row["attempts"],
        created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
        request=request, metadata=request.metadata if request else None,
        error_code=row["error_code"], error_message=scrub(row["error_message"] or "") or None,
        result=result, urls=urls, webhook=webhook_state(row, request),
        batch_id=row["request"].get("batchId"),
    )


def request_of(stored: dict[str, Any]) -> JobRequest | None:
    """The job's request; None for a message refused off the bus because it did not fit the contract."""
    try:
        return msgspec.convert({k: v for k, v in stored.items() if k not in ("id", "owner")}, JobRequest)
    except msgspec.ValidationError:
        return None


def webhook_state(row: Any, request: JobRequest | None) -> WebhookState | None:
    """The job's webhook delivery, when it names a webhook (`pending` until the notifier first tries it)."""
    if request is None or request.webhook is None:
        return None
    at = row["webhook_last_attempt_at"]
    return WebhookState(
        url=request.webhook, status=row["webhook_status"] or "pending", attempts=row["webhook_attempts"],
        last_status_code=row["webhook_last_status_code"], last_error=row["webhook_last_error"],
        last_attempt_at=at.isoformat() if at else None,
    )


def _fresh_signer(res: Resources) -> Signer:
    ttl = res.settings.signed_url_ttl_sec

    async def sign(key: str, filename: str) -> tuple[str, int]:
        return await res.storage.signed_get_url(key, ttl, filename), ttl
    return sign
