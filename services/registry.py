"""Every worker stage by name: one line per stage."""

from __future__ import annotations

from typing import Any

from shared.worker import StageSpec

from . import encoder, fetcher, transcriber, trimmer, uploader

STAGES: dict[str, StageSpec[Any]] = {
    fetcher.STAGE.name: fetcher.STAGE,
    trimmer.STAGE.name: trimmer.STAGE,
    transcriber.STAGE.name: transcriber.STAGE,
    uploader.STAGE.name: uploader.STAGE,
    encoder.STAGE.name: encoder.STAGE,
}
