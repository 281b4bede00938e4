"""Every worker stage's spec, derived from the one stage list (shared.jobs.pipeline.SERVICE_PACKAGES), and the
commands of every process an installation runs (the local stack and the Procfile use these).

`STAGES` is lazy: its names come from the stage list, and a stage's package (its handler and the libraries
it needs: PyAV, the speech engine, ...) is imported only when its spec is asked for. A worker process thus
imports only the stage it runs, and the CLI, the local stack, the Kubernetes base and the Procfile, which need
only the names, import no handler at all."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from shared.jobs.pipeline import SERVICE_PACKAGES

if TYPE_CHECKING:  # the runtime (NATS, S3 clients) is the stage package's import, not the stage list's
    from shared.runtime.worker import StageSpec

GATEWAY, REAPER, NOTIFIER = "gateway", "reaper", "notifier"


def _spec(stage: str, package: str) -> StageSpec[Any]:
    spec: StageSpec[Any] = import_module(f"services.{package}").STAGE
    if spec.name != stage:
        raise RuntimeError(f"services/{package} declares stage {spec.name!r}, but the stage list names it {stage!r}")
    return spec


class _LazyStages(Mapping[str, "StageSpec[Any]"]):
    """Stage name → spec, in the stage list's order; a spec is imported on first access and kept."""

    def __init__(self, packages: Mapping[str, str]) -> None:
        self._packages = dict(packages)
        self._loaded: dict[str, StageSpec[Any]] = {}

    def __getitem__(self, stage: str) -> StageSpec[Any]:
        if stage not in self._loaded:
            self._loaded[stage] = _spec(stage, self._packages[stage])  # KeyError for a name that is no stage
        return self._loaded[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self._packages)

    def __len__(self) -> int:
        return len(self._packages)

    def __contains__(self, stage: object) -> bool:
        return stage in self._packages

    def loaded(self) -> tuple[str, ...]:
        """The stages whose package this process has imported."""
        return tuple(self._loaded)


STAGES = _LazyStages(SERVICE_PACKAGES)


def service_commands(stages: tuple[str, ...] | list[str] = tuple(STAGES)) -> dict[str, tuple[str, ...]]:
    """`clipjet` arguments of each process: the gateway, one worker per stage in `stages`, the reaper, the notifier
    (webhooks)."""
    return {GATEWAY: (GATEWAY,), **{stage: ("worker", stage) for stage in stages}, REAPER: (REAPER,),
            NOTIFIER: (NOTIFIER,)}
