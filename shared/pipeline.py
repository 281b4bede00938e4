"""The stage names and routes: adding a stage means one name here and one folder under services/."""

from __future__ import annotations

PIPELINE_VERSION = "2"  # part of every request fingerprint: bump when the same request would give other bytes

FETCH = "fetch"
TRIM = "trim"
UPLOAD = "upload"
ENCODE = "encode"  # full re-encode (and burn-in); not in STAGES until its service exists
TRANSCRIBE = "transcribe"  # subtitles; not in STAGES until its service exists

STAGES: tuple[str, ...] = (FETCH, TRIM, UPLOAD)  # every stage that has a subject and a consumer
ENTRY_STAGE = FETCH  # where a new job is published
COPY_ROUTE: tuple[str, ...] = (TRIM, UPLOAD)  # what follows the fetcher on the stream-copy path
REENCODE_ROUTE: tuple[str, ...] = (ENCODE, UPLOAD)  # what follows the fetcher when the whole clip is re-encoded
DEFAULT_ROUTE_LENGTH = 1 + len(COPY_ROUTE)  # stages a job is expected to pass before its route is known
