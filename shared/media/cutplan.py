"""Which path cuts a clip: stream copy, smart cut or a full re-encode. One pure function over probe facts.

- `copy`: every frame is copied. `keyframe` precision (the start snaps to the keyframe at or before startSec),
  audio-only media, or a start on a keyframe with an end the copied packets reach cleanly.
- `smart`: the frames before the first keyframe in the clip (and, after B-frames, the last one or two) are
  re-encoded with the stream's own parameters, the rest copied (`shared/media/smartcut.py`).
- `reencode`: the whole clip is re-encoded (the encoder stage), where joining copied and re-encoded frames is
  not safe or not possible here: several video streams, no clean keyframe between startSec and endSec
  (also open GOPs, whose keyframes are followed by frames showing before them), an unknown frame rate, a
  codec this machine has no matching encoder for, or streams that do not fit MP4; and streams whose re-encoded
  frames could not join the copied ones (`shared.media.codecs.splice_blocker`: a codec without smart cut,
  interlaced or HDR video, a profile or pixel format the head encoder cannot match).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from shared.errors import SourceUnreadable
from shared.jobs.contracts import CutPath, Precision, StreamFacts
from shared.media.bounds import WorkBounds, bounded_precision, check_source
from shared.media.codecs import available_encoders, splice_blocker, splice_pix_fmts
from shared.media.coverage import ensure_data_until
from shared.media.cut import copyable_to_mp4
from shared.media.keyframes import CutLayout, layout_in
from shared.media.probe import MediaInfo, opened_media, read_info
from shared.media.smartcut import MAX_REORDER_DELAY

__all__ = ["CutDecision", "available_encoders", "decide_cut", "probe_and_choose"]


@dataclass(frozen=True)
class CutDecision:
    """The path a clip takes and why (logged, and kept in the plan as `cutReason`), with the frame layout it was
    decided on when one was read (a stage cutting the same media reuses it instead of reading it again)."""

    path: CutPath
    reason: str
    layout: CutLayout | None = field(default=None, compare=False, repr=False)


def decide_cut(
    precision: Precision, streams: list[StreamFacts], layout: CutLayout | None, *, fits_mp4: bool,
    encoders: frozenset[str], staged: bool = True, pix_fmts: Mapping[str, frozenset[str]] | None = None,
) -> CutDecision:
    """The cut path for a job. `layout` is the frame layout of the cut (None when there is no video or the
    precision is `keyframe`); `encoders` are the video encoders the ffmpeg here has, `pix_fmts` the pixel formats
    each takes (None: not checked); `staged`: the trimmer reads a staged MP4 copy (URL sources), not the media
    itself (uploads, read in place)."""
    videos = [s for s in streams if s.kind == "video"]
    if not fits_mp4:
        return CutDecision("reencode", "codec_not_mp4")
    if not videos:
        return CutDecision("copy", "audio_only")
    if len(videos) > 1:
        return CutDecision("reencode", "several_video_streams")
    if precision == "keyframe":
        return CutDecision("copy", "keyframe_precision")
    if layout is None or layout.frame_sec <= 0:
        return CutDecision("reencode", "unknown_frame_rate")
    if layout.join is None:
        return CutDecision("reencode", "open_gop" if layout.open_gop else "no_keyframe_in_clip")
    if not staged and not layout.video.stream_id_unique:
        return CutDecision("reencode", "container_stream_ids")  # the concat list could not name the video
    if layout.exact_copy:
        return CutDecision("copy", "start_on_keyframe")
    blocker = splice_blocker(layout.video, encoders, pix_fmts)
    if blocker is not None:
        return CutDecision("reencode", blocker)
    if layout.video.reorder_delay > MAX_REORDER_DELAY:
        return CutDecision("reencode", "b_frame_depth")
    if layout.head_sec <= 0:
        return CutDecision("smart", "end_inside_reordered_frames")
    return CutDecision("smart", "variable_frame_rate" if layout.variable_rate else "start_between_keyframes")


async def probe_and_choose(
    media: str, precision: Precision, start: float, end: float, *, staged: bool = True,
    options: dict[str, str] | None = None, check: Callable[[MediaInfo], None] | None = None,
    decided: CutDecision | None = None, bounds: WorkBounds | None = None,
) -> tuple[MediaInfo, CutDecision]:
    """Probe `media` (a path or URL, read with the libavformat `options`, e.g. a user URL's guarded proxy)
    and decide its cut path, over one opening (a user's URL is read once, not twice): its facts, checked by
    `check` and against `bounds` (`shared.media.bounds`: a keyframe-precision job whose lead-in is too long is
    cut frame-accurately) before the frame layout around the cut points is read (only when it matters), and the
    decision (`decided`, when the request alone decided it, without reading the layout)."""
    encoders = await asyncio.to_thread(available_encoders)
    pix_fmts = await asyncio.to_thread(splice_pix_fmts)
    limits = bounds or WorkBounds()

    def run() -> tuple[MediaInfo, CutDecision]:
        with opened_media(media, options) as container:
            info = read_info(container, keyframe_at=start)
            check_source(info, limits)
            if check is not None:
                check(info)
            # a truncated file fails here, once (after the layout, which reads near the end already: no extra seek)
            covered = min(end, info.duration_sec)
            used = bounded_precision(precision, start, info.keyframe_before, limits)
            if decided is not None:
                ensure_data_until(container, covered)
                return info, decided
            fits = copyable_to_mp4(info.streams)
            videos = sum(1 for s in info.streams if s.kind == "video")
            try:
                layout = layout_in(container, start, end) if fits and videos == 1 and used != "keyframe" else None
            except SourceUnreadable:
                ensure_data_until(container, covered)  # missing frames because the data stops short: say so
                raise
            ensure_data_until(container, covered, read_on=layout is not None)
        decision = decide_cut(used, info.streams, layout, fits_mp4=fits, encoders=encoders, staged=staged,
                              pix_fmts=pix_fmts)
        return info, replace(decision, layout=layout)

    return await asyncio.to_thread(run)
