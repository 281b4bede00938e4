"""The thumbs stage: the finished clip → a poster JPEG, and thumbnails tiled in a sprite sheet with a WebVTT index."""

from shared.jobs.contracts import StageMessage
from shared.runtime.worker import StageSpec

from .handler import THUMBS, handle

STAGE = StageSpec(name=THUMBS, input_type=StageMessage, handle=handle, uses_scratch=True)
