"""Handing a JetStream message back when its handling ended without a verdict (the worker runtime, the notifier)."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from nats.aio.msg import Msg

from shared.runtime.retry import backoff


async def hand_back_now(msg: Msg) -> None:
    """Redeliver it at once (this process is stopping mid-message), shielded from the cancellation under way; a nak
    that cannot be sent is dropped (JetStream redelivers after the ack wait anyway)."""
    with suppress(Exception):
        await asyncio.shield(msg.nak())


async def hand_back_later(msg: Msg, base_delay_sec: float) -> None:
    """Redeliver it after a backoff on its delivery count (PostgreSQL or NATS failed under the handler); a nak that
    cannot be sent is dropped."""
    with suppress(Exception):
        await msg.nak(delay=backoff(msg.metadata.num_delivered, base_delay_sec))
