"""Word error rate for the subtitle tests: the speech's known text against what the model heard."""

from __future__ import annotations

import re

from shared.media.speech import SPEECH_SENTENCES, SpeechVideo, make_speech_video

__all__ = ["SPEECH_SENTENCES", "SpeechVideo", "make_speech_video", "normalise", "word_error_rate"]

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "thirty": "30",
}


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation, number words as digits (espeak reads digits; Whisper may write either)."""
    words = re.sub(r"[^\w\s']", " ", text.lower().replace("-", " ")).split()
    return [NUMBER_WORDS.get(w.strip("'"), w.strip("'")) for w in words if w.strip("'")]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, by edit distance over normalised words."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))
