"""Every worker stage's spec, derived from the one stage list (shared.pipeline.SERVICE_PACKAGES), and the
commands of every process an installation runs (the local stack and the Procfile use these)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from shared.pipeline import SERVICE_PACKAGES
from shared.worker import StageSpec

GATEWAY, REAPER, NOTIFIER = "gateway", "reaper", "notifier"


def _spec(stage: str, package: str) -> StageSpec[Any]:
    spec: StageSpec[Any] = import_module(f"services.{package}").STAGE
    if spec.name != stage:
        raise RuntimeError(f"services/{package} declares stage {spec.name!r}, but the stage list names it {stage!r}")
    return spec


STAGES: dict[str, StageSpec[Any]] = {stage: _spec(stage, package) for stage, package in SERVICE_PACKAGES.items()}


def service_commands(stages: tuple[str, ...] | list[str] = tuple(STAGES)) -> dict[str, tuple[str, ...]]:
    """`clipjet` arguments of each process: the gateway, one worker per stage in `stages`, the reaper, the notifier
    (webhooks)."""
    return {GATEWAY: (GATEWAY,), **{stage: ("worker", stage) for stage in stages}, REAPER: (REAPER,),
            NOTIFIER: (NOTIFIER,)}
