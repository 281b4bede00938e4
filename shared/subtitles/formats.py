"""Cues and words → SRT, WebVTT and the words JSON (`[{word, start, end, probability}]`, plain floats)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from shared.subtitles.cues import Cue
from shared.subtitles.words import Word

MS_PER_SEC = 1000


def _clock(seconds: float, decimal: str) -> str:
    total_ms = max(0, round(seconds * MS_PER_SEC))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, MS_PER_SEC)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered blocks, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    blocks = [
        f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n" for i, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the `WEBVTT` header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{_vtt_text(c.text)}\n" for c in cues]
    return "\n".join(["WEBVTT\n", *blocks])


def _vtt_text(text: str) -> str:
    """Cue text may not contain `-->`, and `&`/`<` start entities and tags."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("-->", "--&gt;")


def to_words_json(words: Sequence[Word]) -> bytes:
    return msgspec.json.encode([
        {"word": w.word, "start": float(w.start), "end": float(w.end), "probability": float(w.probability)}
        for w in words
    ])
