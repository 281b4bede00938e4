"""The fetcher stage: source → probe → staged range → route."""

from shared.jobs.contracts import ClipJobMessage
from shared.jobs.pipeline import FETCH
from shared.runtime.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=FETCH, input_type=ClipJobMessage, handle=handle, uses_scratch=True)
