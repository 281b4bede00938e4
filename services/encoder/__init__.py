"""The encoder stage: staged media → frame-accurate MP4 clip, re-encoding the streams MP4 or the cut need."""

from shared.jobs.contracts import StageMessage
from shared.jobs.pipeline import ENCODE
from shared.runtime.worker import StageSpec

from .handler import handle, pick_encoder

STAGE = StageSpec(name=ENCODE, input_type=StageMessage, handle=handle, open_local=pick_encoder, uses_scratch=True)
