"""The uploader stage: clip → content-hashed result, job done."""

from shared.jobs.contracts import StageMessage
from shared.jobs.pipeline import UPLOAD
from shared.runtime.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=UPLOAD, input_type=StageMessage, handle=handle)
