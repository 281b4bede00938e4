"""A job's webhook, checked at submit: the request's, else the key's default; an http(s) URL the notifier may
reach (the same guard as sources: no private address unless FETCH_ALLOW_PRIVATE), and a secret to sign with.
A refused key default says so, and how to change it, since the job itself did not name it."""

from __future__ import annotations

from shared.errors import BadRequest
from shared.jobs.contracts import JobRequest
from shared.net.webhook_url import WebhookUrlError, check_form, check_reachable
from shared.settings import Settings

from .auth import Caller

FIELD = "webhook"


async def job_webhook(data: JobRequest, caller: Caller, settings: Settings) -> str | None:
    """The URL the job's end is POSTed to (None: no webhook); BadRequest (422) with a stable code otherwise."""
    url = data.webhook or caller.webhook
    if url is None:
        return None
    from_key = data.webhook is None
    try:
        check_form(url, settings)
        if caller.owner is None and not settings.webhook_secret:
            raise BadRequest("webhooks need a signing secret: use an API key, or set WEBHOOK_SECRET for AUTH=off",
                             code="webhook_secret_missing", field=FIELD)
        await check_reachable(url, settings)
    except WebhookUrlError as exc:
        message = exc.message
        if from_key:
            message = (f"the API key's default webhook is not accepted ({message}); the job names no webhook of its "
                       f"own. Name one in the job, or have an operator change the key's default: "
                       f"`clipjet keys webhook {caller.owner} URL` (or `--none` to clear it)")
        raise BadRequest(message, code=exc.code, field=FIELD) from exc
    return url
