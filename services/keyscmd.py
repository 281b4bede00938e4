"""`clipjet keys create|list|revoke|webhook|webhook-secret`: API keys, stored hashed; a new key is printed once,
with its webhook signing secret (`webhook-secret` replaces that secret and prints the new one); `webhook` sets or
clears the key's default webhook. A default webhook is checked like a job's at submit (no private address unless
FETCH_ALLOW_PRIVATE): a refused default would refuse every job of the key that names none."""

from __future__ import annotations

import argparse
import sys

from shared.db import keys, webhooks
from shared.db.pool import create_pool
from shared.jobs.apikeys import new_key
from shared.jobs.contracts import PRIORITIES
from shared.net.webhook_sign import new_secret
from shared.net.webhook_url import WebhookUrlError, check_webhook_url
from shared.settings import Settings

GIB = 1024**3


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="create, list and revoke API keys")
    verbs = parser.add_subparsers(dest="keys_command", required=True)
    create = verbs.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="may read every job and upload")
    create.add_argument("--priorities", help="comma-separated priorities it may use (default KEY_DEFAULT_PRIORITIES)")
    create.add_argument("--max-in-flight", type=int, help="jobs queued or processing at once")
    create.add_argument("--jobs-per-day", type=int, help="jobs per UTC day")
    create.add_argument("--source-seconds-per-day", type=float, help="clip seconds per UTC day")
    create.add_argument("--upload-gib-per-day", type=float, help="GiB of upload slots per UTC day")
    create.add_argument("--webhook", help="default webhook URL of its jobs that name none")
    verbs.add_parser("list", help="every key: id, name, quotas, state")
    revoke = verbs.add_parser("revoke", help="revoke a key (every gateway refuses it within KEY_CACHE_SEC)")
    revoke.add_argument("key_id", help="the key's id (the part after cj_, as `keys list` shows it)")
    hook = verbs.add_parser("webhook", help="set or clear a key's default webhook (jobs that name none POST there)")
    hook.add_argument("key_id", help="the key's id (the part after cj_, as `keys list` shows it)")
    target = hook.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?", help="the new default webhook URL")
    target.add_argument("--none", action="store_true", help="clear the default: jobs that name none get no webhook")
    rotate = verbs.add_parser("webhook-secret", help="replace a key's webhook signing secret and print the new one")
    rotate.add_argument("key_id", help="the key's id (the part after cj_, as `keys list` shows it)")


def _priorities(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PRIORITIES]
    if unknown or not chosen:
        raise SystemExit(f"clipjet keys: priorities must be some of {', '.join(PRIORITIES)}; got {text!r}")
    return chosen


async def create_key(settings: Settings, name: str, *, admin: bool = False, priorities: str | None = None,
                     max_in_flight: int | None = None, jobs_per_day: int | None = None,
                     source_seconds_per_day: float | None = None, upload_gib_per_day: float | None = None,
                     webhook: str | None = None) -> tuple[str, str]:
    """Make a key with the given (else default) quotas; its token and webhook signing secret, to show once."""
    if webhook is not None:
        await _check_webhook(webhook, settings, "--webhook")
    quotas = keys.Quotas(
        max_in_flight if max_in_flight is not None else settings.key_default_max_in_flight,
        jobs_per_day if jobs_per_day is not None else settings.key_default_jobs_per_day,
        source_seconds_per_day if source_seconds_per_day is not None
        else settings.key_default_source_seconds_per_day,
        int((upload_gib_per_day if upload_gib_per_day is not None else settings.key_default_upload_gib_per_day)
            * GIB),
    )
    made = new_key()
    pool = await create_pool(settings)
    try:
        secret = await keys.insert_key(pool, made, name, admin=admin, quotas=quotas, default_webhook=webhook,
                                       priorities=_priorities(priorities or settings.key_default_priorities))
    finally:
        await pool.close()
    return made.token, secret


async def _check_webhook(url: str, settings: Settings, what: str) -> None:
    try:
        await check_webhook_url(url, settings)
    except WebhookUrlError as exc:
        raise SystemExit(f"clipjet keys: {what}: {exc.message} ({exc.code})") from exc


async def set_webhook(settings: Settings, key_id: str, url: str | None) -> bool:
    """Check `url` (None: clear) and store it as the key's default webhook; False when there is no such key."""
    if url is not None:
        await _check_webhook(url, settings, "webhook")
    pool = await create_pool(settings)
    try:
        return await webhooks.set_default_webhook(pool, key_id.removeprefix("cj_").split("_")[0], url)
    finally:
        await pool.close()


async def run(args: argparse.Namespace, settings: Settings) -> int:
    match args.keys_command:
        case "create":
            token, secret = await create_key(
                settings, args.name, admin=args.admin, priorities=args.priorities, max_in_flight=args.max_in_flight,
                jobs_per_day=args.jobs_per_day, source_seconds_per_day=args.source_seconds_per_day,
                upload_gib_per_day=args.upload_gib_per_day, webhook=args.webhook,
            )
            print(token)
            print(f"webhook signing secret: {secret}", file=sys.stderr)  # stdout stays the token alone (scripts)
            return 0
        case "webhook":
            url = None if args.none else args.url
            found = await set_webhook(settings, args.key_id, url)
            print((f"default webhook of {args.key_id}: {url or 'none'}") if found else f"no key {args.key_id}")
            return 0 if found else 1
        case "webhook-secret":
            secret = new_secret()
            pool = await create_pool(settings)
            try:
                found = await webhooks.rotate_secret(pool, args.key_id.removeprefix("cj_").split("_")[0], secret)
            finally:
                await pool.close()
            print(secret if found else f"no key {args.key_id}")
            return 0 if found else 1
        case "list":
            pool = await create_pool(settings)
            try:
                found = await keys.list_keys(pool)
            finally:
                await pool.close()
            print(f"{'id':<13} {'state':<8} {'admin':<5} {'priorities':<17} {'in-flight':>9} {'jobs/day':>9} "
                  f"{'secs/day':>10} {'GiB/day':>8}  name")
            for key in found:
                state = "revoked" if key.revoked_at else "active"
                q = key.quotas
                print(f"{key.key_id:<13} {state:<8} {'yes' if key.admin else 'no':<5} {','.join(key.priorities):<17} "
                      f"{q.max_in_flight:>9} {q.max_jobs_per_day:>9} {q.max_source_seconds_per_day:>10g} "
                      f"{q.max_upload_bytes_per_day / GIB:>8g}  {key.name}")
            return 0
        case "revoke":
            pool = await create_pool(settings)
            try:
                revoked = await keys.revoke_key(pool, args.key_id.removeprefix("cj_").split("_")[0])
            finally:
                await pool.close()
            print(f"revoked {args.key_id}" if revoked else f"no active key {args.key_id}")
            return 0 if revoked else 1
    return 2
