"""The stage names and routes: adding a stage means one name here and one folder under services/."""

from __future__ import annotations

PIPELINE_VERSION = "2"  # part of every request fingerprint: bump when the same request would give other bytes

FETCH = "fetch"
TRIM = "trim"
UPLOAD = "upload"
ENCODE = "encode"  # full re-encode (and burn-in): services/encoder
TRANSCRIBE = "transcribe"  # subtitles: services/transcriber

STAGES: tuple[str, ...] = (FETCH, TRIM, ENCODE, TRANSCRIBE, UPLOAD)  # every stage with a subject and a consumer
ENTRY_STAGE = FETCH  # where a new job is published
COPY_ROUTE: tuple[str, ...] = (TRIM, UPLOAD)  # what follows the fetcher on the stream-copy and smart-cut paths
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


def unavailable(route: tuple[str, ...]) -> tuple[str, ...]:
    """Stages of `route` that have no service (and so no consumer) in this build."""
    return tuple(stage for stage in route if stage not in STAGES)
