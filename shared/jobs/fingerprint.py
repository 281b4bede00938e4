"""Request fingerprints: the same source bytes, range and options under the same pipeline give the same clip."""

from __future__ import annotations

import hashlib

import msgspec

from shared.jobs.contracts import ClipJobMessage
from shared.jobs.pipeline import PIPELINE_VERSION

_encoder = msgspec.json.Encoder(order="deterministic")


def request_fingerprint(job: ClipJobMessage, source_identity: str) -> str:
    """sha256 over what decides the output: the source's identity (not its key or URL alone), the range,
    the options, and the pipeline version. Priority, id, the client's metadata and webhook are left out."""
    fields = msgspec.to_builtins(job)
    for ignored in ("id", "priority", "source", "metadata", "webhook"):
        fields.pop(ignored, None)
    if job.reframe is not None:  # every option spelled out: `focusX: 0.5` and no focusX are the same request
        fields["reframe"] = msgspec.structs.asdict(job.reframe)
    canonical = _encoder.encode({"v": PIPELINE_VERSION, "source": source_identity, "request": fields})
    return hashlib.sha256(canonical).hexdigest()
