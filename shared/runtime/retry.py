"""Backoff for transient failures: exponential with full jitter."""

from __future__ import annotations

import random

MAX_DELAY_SEC = 60.0


def backoff(attempt: int, base_sec: float, cap_sec: float = MAX_DELAY_SEC) -> float:
    """Delay before attempt `attempt + 1`: uniform in [0, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(cap_sec, base_sec * 2 ** max(0, attempt - 1))
    return random.uniform(0, ceiling)


def backoff_at_least_half(attempt: int, base_sec: float, cap_sec: float) -> float:
    """Delay before attempt `attempt + 1` when the wait itself is the point (webhook retries spread over hours):
    uniform in [c/2, c] with c = min(cap, base * 2^(attempt-1))."""
    ceiling = min(cap_sec, base_sec * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
