"""Bounds on the work one job causes, checked on the probe's facts before anything is staged or decoded.

- The source: at most MAX_SOURCE_PIXELS per frame, MAX_SOURCE_FPS, MAX_SOURCE_DURATION_SEC (what its headers
  claim); else a permanent `resolution_too_high`, `frame_rate_too_high` or `source_too_long`.
- The lead-in: a cut decodes (frame precision) or copies (keyframe precision) from the keyframe at or before
  startSec. Keyframe precision copies at most MAX_KEYFRAME_LEADIN_SEC of it; further, the clip is cut
  frame-accurately instead (smart cut or re-encode, reported in result.cutPath). Nothing decodes more than
  MAX_DECODE_LEADIN_SEC before startSec: a source whose keyframe is further is refused (`keyframe_too_far`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import Permanent
from shared.jobs.contracts import Precision
from shared.media.probe import MediaInfo
from shared.settings import Settings

UNLIMITED = float("inf")
FPS_ROUNDING = 0.01  # 120000/1001-style rates count as their nominal one, frames/s


@dataclass(frozen=True)
class WorkBounds:
    max_pixels: float = UNLIMITED
    max_fps: float = UNLIMITED
    max_duration_sec: float = UNLIMITED
    keyframe_leadin_sec: float = UNLIMITED
    decode_leadin_sec: float = UNLIMITED

    @classmethod
    def of(cls, settings: Settings) -> WorkBounds:
        return cls(
            max_pixels=settings.max_source_pixels, max_fps=settings.max_source_fps,
            max_duration_sec=settings.max_source_duration_sec, keyframe_leadin_sec=settings.max_keyframe_leadin_sec,
            decode_leadin_sec=settings.max_decode_leadin_sec,
        )


def check_source(info: MediaInfo, bounds: WorkBounds) -> None:
    """Refuse a source whose frames, frame rate or claimed duration are over the bounds (permanent)."""
    for stream in info.streams:
        if stream.kind == "video" and stream.width and stream.height and \
                stream.width * stream.height > bounds.max_pixels:
            raise Permanent(
                f"the video is {stream.width}x{stream.height}: over the {bounds.max_pixels:,.0f} pixels per frame "
                f"this service takes (3840x2160 by default); scale it down and upload it", code="resolution_too_high")
    if info.frame_rate > bounds.max_fps + FPS_ROUNDING:
        raise Permanent(f"the video runs at {info.frame_rate:.2f} frames/s: over the {bounds.max_fps:g} this "
                        f"service takes; convert it to a lower frame rate and upload it", code="frame_rate_too_high")
    if info.duration_sec > bounds.max_duration_sec:
        raise Permanent(f"the source claims to last {info.duration_sec:,.0f} s: over the "
                        f"{bounds.max_duration_sec:,.0f} s this service takes; cut it shorter and upload it",
                        code="source_too_long")


def bounded_precision(precision: Precision, start: float, keyframe: float | None, bounds: WorkBounds) -> Precision:
    """The precision the cut gets: `keyframe` becomes `frame` when its lead-in would copy more than
    keyframe_leadin_sec; any lead-in over decode_leadin_sec is refused (`keyframe_too_far`)."""
    if keyframe is None:
        return precision
    leadin = start - keyframe
    if leadin > bounds.decode_leadin_sec:
        raise Permanent(
            f"the nearest keyframe is {leadin:.1f} s before startSec (at {keyframe:.3f} s): more than the "
            f"{bounds.decode_leadin_sec:g} s a cut may decode; re-encode the source with a keyframe at least every "
            f"{bounds.decode_leadin_sec:g} s and upload it", code="keyframe_too_far")
    if precision == "keyframe" and leadin > bounds.keyframe_leadin_sec:
        return "frame"
    return precision
