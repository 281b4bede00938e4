"""The trimmer stage: staged media → stream-copied MP4 clip."""

from shared.contracts import StageMessage
from shared.pipeline import TRIM
from shared.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=TRIM, input_type=StageMessage, handle=handle, uses_scratch=True)
