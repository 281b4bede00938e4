"""The transcriber stage: the clip's speech → SRT, WebVTT and word timings (ASR_ENGINE, or the hosted API)."""

from shared.asr.resource import open_asr
from shared.contracts import StageMessage
from shared.pipeline import TRANSCRIBE
from shared.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=TRANSCRIBE, input_type=StageMessage, handle=handle, open_local=open_asr)
