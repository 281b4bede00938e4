"""Word timings → readable subtitle cues (pure functions, no I/O).

Rules: at most `max_line_chars` a line and `max_lines` lines; a cue lasts `min_sec`..`max_sec`; a new cue
starts at a pause between words (`pause_sec`, never more than MAX_GAP_SEC, so no cue spans a longer silence)
and after a sentence end once the cue has lasted `min_sec`. Short cues are lengthened into the following
silence (never past the next cue or the clip's end) or merged with a neighbour.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from shared.subtitles.words import Word

MAX_GAP_SEC = 1.0  # no cue may span a silence longer than this, s
SENTENCE_ENDS = (".", "?", "!", "…", "。", "\uff1f", "\uff01")  # fullwidth ? and ! too
CUE_GAP_SEC = 0.001  # cues never overlap: a lengthened cue stops this short of the next, s


@dataclass(frozen=True)
class CueRules:
    """The readability limits for one set of cues."""

    max_line_chars: int = 42
    max_lines: int = 2
    min_sec: float = 1.0
    max_sec: float = 7.0
    pause_sec: float = 0.6


@dataclass(frozen=True)
class Cue:
    """One subtitle: its time span (seconds from the clip's first frame) and its lines."""

    start: float
    end: float
    lines: tuple[str, ...]
    words: tuple[Word, ...] = field(default=(), compare=False)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def wrap(words: Sequence[str], max_chars: int, max_lines: int) -> tuple[str, ...] | None:
    """The words in at most `max_lines` lines of at most `max_chars`, as balanced as possible; None if they
    do not fit (a single word longer than a line gets a line of its own)."""
    if not words:
        return ()
    one = " ".join(words)
    if len(one) <= max_chars or (len(words) == 1):
        return (one,)
    if max_lines < 2:
        return None
    best: tuple[str, ...] | None = None
    for cut in range(1, len(words)):
        head = " ".join(words[:cut])
        tail = wrap(words[cut:], max_chars, max_lines - 1)
        if len(head) > max_chars or tail is None:
            continue
        candidate = (head, *tail)
        if best is None or max(map(len, candidate)) < max(map(len, best)):
            best = candidate
    return best


def _lines(words: Sequence[Word], rules: CueRules) -> tuple[str, ...] | None:
    return wrap([w.word for w in words], rules.max_line_chars, rules.max_lines)


def build_cues(words: Sequence[Word], rules: CueRules, clip_end: float | None = None) -> list[Cue]:
    """Cues for `words` (in time order) under `rules`; `clip_end` bounds how far a cue may be lengthened."""
    pause = min(rules.pause_sec, MAX_GAP_SEC)
    groups: list[list[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if current is None or _must_split(current, word, rules, pause):
            groups.append([word])
        else:
            current.append(word)
    groups = _merge_short(groups, rules, pause)
    cues = [Cue(g[0].start, g[-1].end, _lines(g, rules) or (" ".join(w.word for w in g),), tuple(g))
            for g in groups]
    return _stretch(cues, rules, clip_end)


def _must_split(current: list[Word], word: Word, rules: CueRules, pause: float) -> bool:
    last = current[-1]
    if word.start - last.end >= pause:
        return True
    if word.end - current[0].start > rules.max_sec:
        return True
    if last.word.endswith(SENTENCE_ENDS) and last.end - current[0].start >= rules.min_sec:
        return True
    return _lines([*current, word], rules) is None


def _fits(words: list[Word], rules: CueRules, pause: float) -> bool:
    gaps_ok = all(b.start - a.end < pause for a, b in itertools.pairwise(words))
    return gaps_ok and words[-1].end - words[0].start <= rules.max_sec and _lines(words, rules) is not None


def _merge_short(groups: list[list[Word]], rules: CueRules, pause: float) -> list[list[Word]]:
    """A group shorter than min_sec joins its previous or next neighbour when the joined cue keeps the rules."""
    merged: list[list[Word]] = []
    pending = list(groups)
    while pending:
        group = pending.pop(0)
        if group[-1].end - group[0].start < rules.min_sec:
            if merged and _fits(merged[-1] + group, rules, pause):
                merged[-1] = merged[-1] + group
                continue
            if pending and _fits(group + pending[0], rules, pause):
                pending[0] = group + pending[0]
                continue
        merged.append(group)
    return merged


def _stretch(cues: list[Cue], rules: CueRules, clip_end: float | None) -> list[Cue]:
    """Lengthen cues shorter than min_sec: first into the silence after them, then back into the one before."""
    out: list[Cue] = []
    for i, cue in enumerate(cues):
        if cue.end - cue.start >= rules.min_sec:
            out.append(cue)
            continue
        limit = cues[i + 1].start - CUE_GAP_SEC if i + 1 < len(cues) else float("inf")
        if clip_end is not None:
            limit = min(limit, clip_end)
        end = max(cue.end, min(cue.start + rules.min_sec, limit))
        floor = out[-1].end + CUE_GAP_SEC if out else 0.0
        start = min(cue.start, max(floor, end - rules.min_sec))
        out.append(replace(cue, start=round(start, 3), end=round(end, 3)))
    return out
