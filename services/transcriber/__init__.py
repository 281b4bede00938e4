"""The transcriber stage: the clip's speech → SRT, WebVTT and word timings (ASR_ENGINE, or the hosted API)."""

from shared.asr.resource import open_asr
from shared.jobs.contracts import StageMessage
from shared.jobs.pipeline import TRANSCRIBE
from shared.runtime.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=TRANSCRIBE, input_type=StageMessage, handle=handle, open_local=open_asr)
