"""The `subtitles=` video filter that draws a clip's SRT into the picture during its (one) re-encode.

The encoder appends `burn_in_filter_for(...)` (or `subtitles_filter(...)`) to its video filters. Font:
DejaVu Sans from Debian `fonts-dejavu-core` (scripts/bootstrap.sh installs it), looked up in SUBS_FONTS_DIR
first. libass lays SRT subtitles out on a 288-line script canvas (PlayResY) scaled to the picture's height,
so sizes given in that canvas's units are fractions of the height: the same style is readable at 360p and at
1080p.
"""

from __future__ import annotations

import re
from pathlib import Path

from shared.errors import Permanent
from shared.jobs.contracts import StageMessage
from shared.media.reframe import aspect_ratio
from shared.settings import Settings
from shared.storage.s3 import Storage

ASS_PLAY_RES_Y = 288  # libass's script height for SRT input; font size and margins are in these units
_OPTION_SPECIALS = re.compile(r"([\\:'])")  # escaped inside one filter option value
_GRAPH_SPECIALS = re.compile(r"([\\'\[\],;])")  # escaped again for the filtergraph parser


def _escape(value: str) -> str:
    return _GRAPH_SPECIALS.sub(r"\\\1", _OPTION_SPECIALS.sub(r"\\\1", value))


def burn_in_style(settings: Settings, aspect: float | None = None) -> str:
    """The ASS `force_style` for burned-in subtitles: font, size and bottom margin relative to the height.

    `aspect`: the picture's width over height when the encoder knows it (a reframed clip): the font size is then
    relative to the picture's shorter side, so a cue fits across a 9:16 frame as it does across a 16:9 one
    (libass sizes fonts by the height; a landscape picture is unchanged)."""
    shorter_side = min(1.0, aspect) if aspect else 1.0  # as a fraction of the height
    size = max(1, round(settings.subs_font_height_ratio * shorter_side * ASS_PLAY_RES_Y))
    margin = max(0, round(settings.subs_margin_height_ratio * ASS_PLAY_RES_Y))
    parts = [f"FontName={settings.subs_font}", f"FontSize={size}", f"MarginV={margin}", "Alignment=2"]
    if settings.subs_style:
        parts.append(settings.subs_style)
    return ",".join(parts)


def subtitles_filter(srt: Path, settings: Settings, aspect: float | None = None) -> str:
    """`subtitles=filename=…:fontsdir=…:force_style=…`, escaped for use inside a `-vf`/`-filter_complex` chain
    (`aspect`: the picture's width over height, when known; see burn_in_style)."""
    options = [("filename", str(srt)), ("charenc", "UTF-8")]
    if settings.subs_fonts_dir.is_dir():
        options.append(("fontsdir", str(settings.subs_fonts_dir)))
    options.append(("force_style", burn_in_style(settings, aspect)))
    return "subtitles=" + ":".join(f"{name}={_escape(value)}" for name, value in options)


async def burn_in_filter_for(task: StageMessage, storage: Storage, scratch: Path, settings: Settings) -> str | None:
    """For the encoder: the `subtitles=` filter of a job that asks for burn-in (its SRT, written by the
    transcriber earlier on the route, fetched into `scratch`), or None when there is nothing to burn (no burn-in
asked, or a clip without speech).

    The SRT's times count from the clip's first frame (startSec): put the filter where the frames' timestamps
    start at 0 (input `-ss`, or after `setpts=PTS-STARTPTS`), in the same chain as the cut's other filters,
    after a reframe's (`shared.media.reframe`): the cues are laid out on the new frame, sized for its aspect.
    """
    if not task.job.subs.burn_in:
        return None
    srt = task.artifact("srt")
    if srt is None:
        raise Permanent("burn-in was asked for but the route brought no subtitles (srt artifact)",
                        code="invalid_message")
    if srt.size == 0:  # no speech in the clip: nothing to draw (libass refuses an empty file)
        return None
    path = scratch / "burn-in.srt"
    await storage.download(srt.key, path)
    aspect = float(aspect_ratio(task.job.reframe)) if task.job.reframe is not None else None
    return subtitles_filter(path, settings, aspect) if path.read_text(encoding="utf-8").strip() else None
