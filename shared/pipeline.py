"""The one list of stages and the routes through them: adding a stage means one entry in SERVICE_PACKAGES and
one folder under services/ declaring its ``STAGE`` spec; the registry, the CLI, the local stack, the bus, the
Kubernetes base and the Procfile (checked by a test) all derive from this list."""

from __future__ import annotations

PIPELINE_VERSION = "2"  # part of every request fingerprint: bump when the same request would give other bytes

FETCH = "fetch"
TRIM = "trim"
UPLOAD = "upload"
ENCODE = "encode"  # full re-encode (and burn-in): services/encoder
TRANSCRIBE = "transcribe"  # subtitles: services/transcriber

SERVICE_PACKAGES: dict[str, str] = {  # every stage, by name, with its folder under services/ (the one list)
    FETCH: "fetcher", TRIM: "trimmer", ENCODE: "encoder", TRANSCRIBE: "transcriber", UPLOAD: "uploader",
}
STAGES: tuple[str, ...] = tuple(SERVICE_PACKAGES)  # every stage with a subject and a consumer
ENTRY_STAGE = FETCH  # where a new job is published
COPY_ROUTE: tuple[str, ...] = (TRIM, UPLOAD)  # stream copy or smart cut of a range the fetcher staged (URL, page)
# the fetcher cut the clip itself: a plain stream copy (keyframe precision), or a frame-accurate cut of media in
# storage already (an upload, a batch's staged span)
CUT_BY_FETCHER_ROUTE: tuple[str, ...] = (UPLOAD,)
REENCODE_ROUTE: tuple[str, ...] = (ENCODE, UPLOAD)  # what follows the fetcher when the whole clip is re-encoded
DEFAULT_ROUTE_LENGTH = 1 + len(COPY_ROUTE)  # stages a job is expected to pass before its route is known
BURN_IN_ROUTE: tuple[str, ...] = (TRANSCRIBE, ENCODE, UPLOAD)  # burn-in: subtitles first, then one re-encode


def with_subtitles(route: tuple[str, ...], enabled: bool, burn_in: bool) -> tuple[str, ...]:
    """The route after the fetcher once subtitles are asked for.

    Without burn-in, TRANSCRIBE runs on the finished clip just before UPLOAD (its times are the clip's).
    With burn-in the clip must be re-encoded with the subtitles drawn in, in the same pass as the cut:
    TRANSCRIBE reads the staged source from startSec, then ENCODE cuts and burns, then UPLOAD.
    """
    if burn_in:
        return BURN_IN_ROUTE
    if not enabled or TRANSCRIBE in route:
        return route
    at = route.index(UPLOAD) if UPLOAD in route else len(route)
    return (*route[:at], TRANSCRIBE, *route[at:])


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
