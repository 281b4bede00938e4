"""A recognised word with its timing: what the transcriber produces and the subtitle builders consume."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """One recognised word, times in seconds from the clip's first frame (plain floats)."""

    word: str
    start: float
    end: float
    probability: float
