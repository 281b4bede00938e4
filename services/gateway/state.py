"""What every gateway request may use: the process's clients, the backlog gauge and the circuit breakers."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.datastructures import State

from shared.breaker import Breakers
from shared.bus import BacklogGauge
from shared.resources import Resources
from shared.scratch import ScratchGauge


@dataclass
class Gateway:
    res: Resources
    backlog: BacklogGauge
    breakers: Breakers
    scratch: ScratchGauge  # the workers' scratch reports: new jobs are refused while every node is full

    @classmethod
    def for_resources(cls, res: Resources) -> Gateway:
        settings = res.settings
        breakers = Breakers(settings.breaker_failures, settings.breaker_open_sec)
        return cls(res, BacklogGauge(res.js, settings), breakers, ScratchGauge(settings))


def gateway_of(state: State) -> Gateway:
    """The `gw` dependency of every handler."""
    return state.gateway
