"""What every gateway request may use: the process's clients, the backlog gauge and the circuit breakers."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from shared.breaker import Breakers
from shared.bus import BacklogGauge
from shared.resources import Resources
from shared.scratch import ScratchGauge

from .keycache import KeyCache


@dataclass
class Gateway:
    res: Resources
    backlog: BacklogGauge
    breakers: Breakers
    scratch: ScratchGauge  # the workers' scratch reports: new jobs are refused while every node is full
    keys: KeyCache  # API key lookups, kept KEY_CACHE_SEC

    @classmethod
    def for_resources(cls, res: Resources) -> Gateway:
        settings = res.settings
        breakers = Breakers(settings.breaker_failures, settings.breaker_open_sec)
        return cls(res, BacklogGauge(res.js, settings), breakers, ScratchGauge(settings),
                   KeyCache(settings.key_cache_sec))


def gateway_of(state: State) -> Gateway:
    """The `gw` dependency of every handler."""
    return state.gateway
