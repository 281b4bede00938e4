"""The video filters that reframe a clip for shorts (`reframe` of a job): crop to, or pad into, 9:16, 1:1 or 4:5.

They run in the encoder's one pass, before the burn-in's `subtitles=` filter (so cues are laid out on the new
frame) and the encoder's own filters (pixel format, hardware upload): CPU filters, the same for every encoder.
Sizes are ffmpeg expressions over the decoded picture (`iw`, `ih`, `sar`), so a rotated phone video (ffmpeg
turns it upright before the filters) and non-square pixels are framed as they are shown. Every output side is
even (H.264 in 4:2:0).

- crop: the largest window of the aspect inside the picture, pixels kept 1:1 (1920x1080 to 9:16: 608x1080;
  to 1:1: 1080x1080). Horizontally the window is centred on `focusX` (a fraction of the width) and kept inside
  the picture; a picture taller than the aspect loses equal bands at top and bottom.
- pad: the frame's shorter side is the picture's shorter side (1920x1080 to 9:16: 1080x1920, to 4:5: 1080x1350;
  1080x1920 to 1:1: 1080x1080); the whole picture is scaled to fit it, centred, with black bars.
"""

from __future__ import annotations

from fractions import Fraction

from shared.jobs.contracts import Aspect, Reframe

ASPECTS: dict[Aspect, Fraction] = {"9:16": Fraction(9, 16), "1:1": Fraction(1, 1), "4:5": Fraction(4, 5)}
PAD_COLOR = "black"
ESCAPED_COMMA = "\\,"  # a comma inside an option's value, as the filtergraph parser takes it


def aspect_ratio(reframe: Reframe) -> Fraction:
    """Width over height of the reframed picture."""
    return ASPECTS[reframe.aspect]


def _even_down(expr: str) -> str:
    return f"2*trunc(({expr})/2)"


def _even_near(expr: str) -> str:
    return f"2*round(({expr})/2)"


def _escaped(*options: tuple[str, str]) -> str:
    """`name=value:…` with the commas inside expressions escaped for the filtergraph parser."""
    return ":".join(f"{name}={value.replace(',', ESCAPED_COMMA)}" for name, value in options)


def crop_filters(aspect: Fraction, focus_x: float) -> list[str]:
    """The crop window of `aspect` centred on `focus_x` (clamped inside the picture), even sides."""
    a = f"{aspect.numerator}/{aspect.denominator}"
    width = f"min({_even_down('iw')}, {_even_near(f'ih*{a}/sar')})"  # shown width ih*a, in stored pixels
    height = f"min({_even_down('ih')}, {_even_near(f'iw*sar/({a})')})"
    x = f"clip(iw*{focus_x:.6f}-ow/2, 0, iw-ow)"
    return ["crop=" + _escaped(("w", width), ("h", height), ("x", x), ("y", "(ih-oh)/2"))]


def pad_filters(aspect: Fraction) -> list[str]:
    """Scale the picture (as shown: `sar` applied) to fit a frame of `aspect` whose shorter side is the
    picture's, then pad it to that frame with centred black bars (square pixels out)."""
    a = f"{aspect.numerator}/{aspect.denominator}"
    short = "min(iw*sar, ih)"  # the picture's shorter side as shown
    frame_w = f"{short}*max(1, {a})"  # the frame's shorter side is `short`
    frame_h = f"{short}/min(1, {a})"
    # the picture scaled to fit (frame_w x frame_h), its shown aspect kept (dar = iw*sar/ih)
    scale = _escaped(("w", _even_near(f"min({frame_w}, ({frame_h})*dar)")),
                     ("h", _even_near(f"min({frame_h}, ({frame_w})/dar)")))
    # after the scale one side fills the frame; the other is padded to the aspect (rounded up to even)
    pad = _escaped(("w", f"2*ceil(max(iw, ih*{a})/2)"), ("h", f"2*ceil(max(ih, iw/({a}))/2)"),
                   ("x", "(ow-iw)/2"), ("y", "(oh-ih)/2"), ("color", PAD_COLOR))
    return [f"scale={scale}", "setsar=1", f"pad={pad}"]


def reframe_filters(reframe: Reframe | None) -> list[str]:
    """The `-vf` filters (before any subtitles) that reframe a clip; [] for None (the source's frame)."""
    if reframe is None:
        return []
    aspect = aspect_ratio(reframe)
    if reframe.mode == "pad":
        return pad_filters(aspect)
    return crop_filters(aspect, reframe.focus_x)
