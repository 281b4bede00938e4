"""The transcriber's result files, declared once (`shared.jobs.outputs`): SubRip, WebVTT and the words JSON."""

from __future__ import annotations

from shared.jobs.outputs import Output

SRT = Output("srt", "clip.srt", "application/x-subrip")
VTT = Output("vtt", "clip.vtt", "text/vtt")
WORDS = Output("words", "clip.words.json", "application/json")
SUBTITLE_OUTPUTS: tuple[Output, ...] = (SRT, VTT, WORDS)
