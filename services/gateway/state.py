"""What every gateway request may use: the process's clients, the backlog gauge and the circuit breakers."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from shared.breaker import Breakers
from shared.bus import BacklogGauge
from shared.resources import Resources


@dataclass
class Gateway:
    res: Resources
    backlog: BacklogGauge
    breakers: Breakers

    @classmethod
    def for_resources(cls, res: Resources) -> Gateway:
        settings = res.settings
        return cls(res, BacklogGauge(res.js, settings), Breakers(settings.breaker_failures, settings.breaker_open_sec))


def gateway_of(state: State) -> Gateway:
    """The `gw` dependency of every handler."""
    return state.gateway
