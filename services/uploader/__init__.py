"""The uploader stage: clip → content-hashed result, job done."""

from shared.contracts import StageMessage
from shared.pipeline import UPLOAD
from shared.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=UPLOAD, input_type=StageMessage, handle=handle)
