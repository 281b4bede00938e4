"""A job's webhook, checked at submit: the request's, else the key's default; an http(s) URL the notifier may
reach (the same guard as sources: no private address unless FETCH_ALLOW_PRIVATE), and a secret to sign with."""

from __future__ import annotations

import asyncio

from shared.contracts import JobRequest
from shared.errors import BadRequest, ClipError, FetchRefused
from shared.netguard import Policy, check_url, split_url
from shared.settings import Settings

from .auth import Caller

RESOLVE_TIMEOUT_SEC = 5.0  # longest the gateway waits to resolve a webhook's host at submit, s
FIELD = "webhook"


async def job_webhook(data: JobRequest, caller: Caller, settings: Settings) -> str | None:
    """The URL the job's end is POSTed to (None: no webhook); BadRequest (422) with a stable code otherwise."""
    url = data.webhook or caller.webhook
    if url is None:
        return None
    if len(url) > settings.max_url_chars:
        raise BadRequest(f"webhook is {len(url)} characters; the longest accepted is {settings.max_url_chars}",
                         code="webhook_invalid", field=FIELD)
    try:
        split_url(url)
    except FetchRefused as exc:
        raise BadRequest(f"webhook: {exc.message}", code="webhook_invalid", field=FIELD) from exc
    if caller.owner is None and not settings.webhook_secret:
        raise BadRequest("webhooks need a signing secret: use an API key, or set WEBHOOK_SECRET for AUTH=off",
                         code="webhook_secret_missing", field=FIELD)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SEC):
            await check_url(url, Policy.of(settings))
    except FetchRefused as exc:
        raise BadRequest(f"webhook: {exc.message}", code="webhook_refused", field=FIELD) from exc
    except (ClipError, TimeoutError) as exc:
        raise BadRequest(f"webhook: the host of {url[:200]!r} does not resolve; name a public host",
                         code="webhook_unresolvable", field=FIELD) from exc
    return url
