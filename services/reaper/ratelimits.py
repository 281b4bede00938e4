"""The reaper's `rate_limits` step: drop the gateway's rate-limit windows that no request can count any more."""

from __future__ import annotations

import time

from shared.db import keys
from shared.runtime.resources import Resources

KEPT_WINDOWS = 2  # the current window and the one before it are read by the sliding estimate


async def prune_rate_windows(res: Resources, _report: object) -> None:
    now = int(time.time())
    window = keys.RATE_WINDOW_SEC
    await keys.prune_rate_windows(res.db, now - now % window - (KEPT_WINDOWS - 1) * window)
