"""Cue building and subtitle formats on word timings (pure code), and the route subtitles give a job."""

from __future__ import annotations

import itertools
import json

import pytest
import srt
import webvtt

from shared.jobs.contracts import JobRequest, Subtitles, UrlSource
from shared.jobs.pipeline import BURN_IN_ROUTE, COPY_ROUTE, ENCODE, TRANSCRIBE, TRIM, UPLOAD, route_for
from shared.subtitles.cues import MAX_GAP_SEC, Cue, CueRules, build_cues, wrap
from shared.subtitles.formats import to_srt, to_vtt, to_words_json
from shared.subtitles.words import Word

RULES = CueRules()


def _speech(text: str, start: float, word_sec: float = 0.3, gap_sec: float = 0.05) -> list[Word]:
    words, at = [], start
    for token in text.split():
        words.append(Word(token, round(at, 3), round(at + word_sec, 3), 0.9))
        at += word_sec + gap_sec
    return words


def assert_readable(cues: list[Cue], words: list[Word], rules: CueRules = RULES) -> None:
    """Every cue rule the product asks for, checked against the words the cues were made from."""
    assert [w for c in cues for w in c.words] == words  # every word once, in order
    for cue in cues:
        assert 1 <= len(cue.lines) <= rules.max_lines
        assert all(len(line) <= rules.max_line_chars for line in cue.lines), cue.lines
        assert rules.min_sec - 1e-6 <= cue.end - cue.start <= rules.max_sec + 1e-6, cue
        gaps = [b.start - a.end for a, b in itertools.pairwise(cue.words)]
        assert all(g <= MAX_GAP_SEC for g in gaps), gaps
    assert all(a.end <= b.start for a, b in itertools.pairwise(cues))


def test_long_speech_is_split_into_readable_cues() -> None:
    text = ("this sentence keeps going without any punctuation at all so the builder must cut it by length "
            "and by time alone because nothing else tells it where to stop talking about subtitles today")
    words = _speech(text, 0.5)
    cues = build_cues(words, RULES)
    assert len(cues) > 2
    assert_readable(cues, words)


def test_pauses_and_sentence_ends_start_new_cues() -> None:
    first = _speech("Hello there, my friend.", 0.0)
    second = _speech("How are you today, my old friend?", first[-1].end + 0.2)
    third = _speech("Fine, thanks.", second[-1].end + 1.5)  # a long silence before it
    words = first + second + third
    cues = build_cues(words, RULES, clip_end=20)
    assert_readable(cues, words)
    assert [c.text.replace("\n", " ") for c in cues] == [
        "Hello there, my friend.", "How are you today, my old friend?", "Fine, thanks."
    ]


def test_a_short_lone_word_is_lengthened_not_dropped() -> None:
    words = [Word("Yes.", 2.0, 2.3, 0.9)]
    cues = build_cues(words, RULES, clip_end=10)
    assert_readable(cues, words)
    assert (cues[0].start, cues[0].end) == (2.0, 3.0)


def test_wrap_balances_two_lines() -> None:
    lines = wrap("the quick brown fox jumps over the lazy dog near the river".split(), 42, 2)
    assert lines is not None and len(lines) == 2 and abs(len(lines[0]) - len(lines[1])) < 12
    assert wrap(["x" * 30] * 3, 42, 2) is None


def test_formats_parse_with_real_parsers(tmp_path) -> None:
    words = _speech("Hello there. <b> & --> are kept as text here, not markup.", 1.0)
    cues = build_cues(words, RULES)
    parsed = list(srt.parse(to_srt(cues)))
    assert [p.content for p in parsed] == [c.text for c in cues]
    assert parsed[0].start.total_seconds() == pytest.approx(cues[0].start, abs=1e-3)
    path = tmp_path / "subs.vtt"
    path.write_text(to_vtt(cues))
    vtt = webvtt.read(str(path))
    assert len(vtt.captions) == len(cues)
    assert vtt.captions[-1].end == "00:00:05.150" and cues[-1].end == pytest.approx(5.15)
    data = json.loads(to_words_json(words))
    assert data[0] == {"word": "Hello", "start": 1.0, "end": 1.3, "probability": 0.9}


def _asking(enabled: bool, burn_in: bool) -> JobRequest:
    return JobRequest(source=UrlSource(url="https://example.com/a.mp4"), start_sec=0, end_sec=1,
                      subs=Subtitles(enabled=enabled, burn_in=burn_in))


def test_route_with_subtitles() -> None:
    assert route_for(COPY_ROUTE, _asking(False, False)) == (TRIM, UPLOAD)
    assert route_for(COPY_ROUTE, _asking(True, False)) == (TRIM, TRANSCRIBE, UPLOAD)
    assert route_for(COPY_ROUTE, _asking(True, True)) == (TRANSCRIBE, ENCODE, UPLOAD) == BURN_IN_ROUTE
    assert route_for((ENCODE, UPLOAD), _asking(True, False)) == (ENCODE, TRANSCRIBE, UPLOAD)
