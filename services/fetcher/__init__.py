"""The fetcher stage: source → probe → staged range → route."""

from shared.contracts import ClipJobMessage
from shared.pipeline import FETCH
from shared.worker import StageSpec

from .handler import handle

STAGE = StageSpec(name=FETCH, input_type=ClipJobMessage, handle=handle, uses_scratch=True)
