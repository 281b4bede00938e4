"""What every gateway request may use: the process's clients, the backlog gauge and the circuit breakers."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from shared.db import keys
from shared.runtime.breaker import Breakers
from shared.runtime.bus import BacklogGauge
from shared.runtime.resources import Resources
from shared.storage.scratch import ScratchGauge

from .keycache import KeyCache
from .signed import SignedUrls
from .ttlcache import TtlCache
from .writes import GroupedWrites

UPLOADS_SEEN_MAX = 10_000  # found uploads remembered per gateway process


@dataclass
class Gateway:
    res: Resources
    backlog: BacklogGauge
    breakers: Breakers
    scratch: ScratchGauge  # the workers' scratch reports: new jobs are refused while every node is full
    keys: KeyCache  # API key lookups, kept KEY_CACHE_SEC
    signed: SignedUrls  # signed result URLs, each reused SIGNED_URL_REUSE_SEC
    uploads_seen: TtlCache[str, int]  # upload key → its size, for UPLOAD_SEEN_CACHE_SEC after a HEAD found it
    writes: GroupedWrites  # rate-limit hits and published_at marks, written together in batches (guarded by db)

    @classmethod
    def for_resources(cls, res: Resources) -> Gateway:
        settings = res.settings
        breakers = Breakers(settings.breaker_failures, settings.breaker_open_sec)
        return cls(res, BacklogGauge(res.js, settings), breakers, ScratchGauge(settings),
                   KeyCache(settings.key_cache_sec), SignedUrls(res.storage, settings),
                   TtlCache(settings.upload_seen_cache_sec, UPLOADS_SEEN_MAX),
                   GroupedWrites(res.db, breakers.db, keys.RATE_WINDOW_SEC))


def gateway_of(state: State) -> Gateway:
    """The `gw` dependency of every handler."""
    return state.gateway
