"""The one list of stages and the routes through them: adding a stage means one entry in STAGE_LIST and one
folder under services/ declaring its ``STAGE`` spec (and the result files it makes: `shared.jobs.outputs`); the
registry, the CLI, the local stack, the bus, the Kubernetes base, the Procfile (checked by a test) and every
job's route derive from this list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.jobs.contracts import ClipSpec

PIPELINE_VERSION = "2"  # part of every request fingerprint: bump when the same request would give other bytes

FETCH = "fetch"
TRIM = "trim"
UPLOAD = "upload"
ENCODE = "encode"  # full re-encode (and burn-in): services/encoder
TRANSCRIBE = "transcribe"  # subtitles: services/transcriber


@dataclass(frozen=True)
class Stage:
    """One stage: its name (its subject, its worker), its folder under services/, and for an optional stage,
    when it joins a job's route (`joins`, a predicate on the request): then it runs on the finished clip,
    just before UPLOAD, in this list's order."""

    name: str
    package: str
    joins: Callable[[ClipSpec], bool] | None = None


STAGE_LIST: tuple[Stage, ...] = (  # every stage (the one list)
    Stage(FETCH, "fetcher"), Stage(TRIM, "trimmer"), Stage(ENCODE, "encoder"),
    Stage(TRANSCRIBE, "transcriber", joins=lambda job: job.subs.enabled),
    Stage("thumbs", "thumbnailer", joins=lambda job: job.poster is not None or job.thumbnails is not None),
    Stage(UPLOAD, "uploader"),
)
SERVICE_PACKAGES: dict[str, str] = {stage.name: stage.package for stage in STAGE_LIST}  # name → folder
STAGES: tuple[str, ...] = tuple(SERVICE_PACKAGES)  # every stage with a subject and a consumer
ENTRY_STAGE = FETCH  # where a new job is published
COPY_ROUTE: tuple[str, ...] = (TRIM, UPLOAD)  # stream copy or smart cut of a range the fetcher staged (URL, page)
# the fetcher cut the clip itself: a plain stream copy (keyframe precision), or a frame-accurate cut of media in
# storage already (an upload, a batch's staged span)
CUT_BY_FETCHER_ROUTE: tuple[str, ...] = (UPLOAD,)
REENCODE_ROUTE: tuple[str, ...] = (ENCODE, UPLOAD)  # what follows the fetcher when the whole clip is re-encoded
DEFAULT_ROUTE_LENGTH = 1 + len(COPY_ROUTE)  # stages a job is expected to pass before its route is known
BURN_IN_ROUTE: tuple[str, ...] = (TRANSCRIBE, ENCODE, UPLOAD)  # burn-in: subtitles first, then one re-encode


def route_for(cut_route: tuple[str, ...], job: ClipSpec) -> tuple[str, ...]:
    """The route after the fetcher: the cut path's stages, then every optional stage the request asks for
    (STAGE_LIST's `joins`), then UPLOAD.

    Burn-in is the one exception to "after the cut": the clip must be re-encoded with the subtitles drawn in,
    in the same pass as the cut, so TRANSCRIBE reads the staged source from startSec, then ENCODE cuts and
    burns (BURN_IN_ROUTE). Otherwise TRANSCRIBE, like every optional stage, reads the finished clip.
    """
    base = BURN_IN_ROUTE if job.subs.burn_in else cut_route
    joining = tuple(s.name for s in STAGE_LIST if s.joins is not None and s.name not in base and s.joins(job))
    at = base.index(UPLOAD) if UPLOAD in base else len(base)
    return (*base[:at], *joining, *base[at:])


def installed_stages(setting: str) -> tuple[str, ...]:
    """The stages this installation runs, from INSTALLED_STAGES (comma-separated names; empty: every stage).

    Raises ValueError for a name that is no stage, so a typo stops a process at start-up."""
    names = tuple(dict.fromkeys(name.strip() for name in setting.split(",") if name.strip()))
    if unknown := [name for name in names if name not in STAGES]:
        raise ValueError(f"INSTALLED_STAGES names {', '.join(unknown)}, which are no stages; "
                         f"use some of {', '.join(STAGES)} (empty: all)")
    return names or STAGES


def unavailable(route: tuple[str, ...], installed: tuple[str, ...] = STAGES) -> tuple[str, ...]:
    """Stages of `route` that this installation does not run (`installed`, see installed_stages): a job whose
    route needs one fails at once with `stage_unavailable` instead of waiting in a queue nobody reads."""
    return tuple(stage for stage in route if stage not in installed)
