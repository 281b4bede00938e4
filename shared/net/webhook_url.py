"""A webhook URL checked the way the notifier will reach it: http(s), not too long, a host that resolves to an
address the fetch guard allows (no private address unless FETCH_ALLOW_PRIVATE). Used at submit (the gateway)
and when a key's default webhook is set (`clipjet keys create --webhook`, `clipjet keys webhook`)."""

from __future__ import annotations

import asyncio

from shared.errors import ClipError, FetchRefused
from shared.net.netguard import Policy, check_url, split_url
from shared.settings import Settings

RESOLVE_TIMEOUT_SEC = 5.0  # longest one check waits to resolve the webhook's host, s


class WebhookUrlError(Exception):
    """Why a webhook URL is not accepted; `code` is the stable error code of the gateway's 422."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def check_form(url: str, settings: Settings) -> None:
    """The URL's form alone (no lookup): WebhookUrlError `webhook_invalid`."""
    if len(url) > settings.max_url_chars:
        raise WebhookUrlError("webhook_invalid",
                              f"webhook is {len(url)} characters; the longest accepted is {settings.max_url_chars}")
    try:
        split_url(url)
    except FetchRefused as exc:
        raise WebhookUrlError("webhook_invalid", f"webhook: {exc.message}") from exc


async def check_reachable(url: str, settings: Settings) -> None:
    """The URL's host resolves to allowed addresses: WebhookUrlError `webhook_refused` or `webhook_unresolvable`."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SEC):
            await check_url(url, Policy.of(settings))
    except FetchRefused as exc:
        raise WebhookUrlError("webhook_refused", f"webhook: {exc.message}") from exc
    except (ClipError, TimeoutError) as exc:
        raise WebhookUrlError("webhook_unresolvable",
                              f"webhook: the host of {url[:200]!r} does not resolve; name a public host") from exc


async def check_webhook_url(url: str, settings: Settings) -> None:
    """Form, then reachability; WebhookUrlError on the first problem."""
    check_form(url, settings)
    await check_reachable(url, settings)
