"""The trimmer stage: staged media → stream-copied MP4 clip."""

from shared.jobs.contracts import StageMessage
from shared.jobs.pipeline import TRIM
from shared.runtime.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=TRIM, input_type=StageMessage, handle=handle, uses_scratch=True)
