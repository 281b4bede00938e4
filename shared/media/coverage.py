"""Whether a media file's data reaches the time its index promises: a truncated upload (an MP4 whose moov names
samples past the bytes present) fails once, at the fetcher, with `source_truncated`, instead of cutting short
outputs that look like failed reads and are tried again."""

from __future__ import annotations

from fractions import Fraction

import av
import av.error

from shared.errors import SourceUnreadable

COVERAGE_LEAD_SEC = 0.5  # a packet at or after (t - this) proves the data reaches t (streams end a packet apart)
MEDIA_KINDS = ("video", "audio")


def ensure_data_until(container: av.container.InputContainer, t: float) -> None:
    """SourceUnreadable (`source_truncated`) unless an audio or video packet at or after `t - COVERAGE_LEAD_SEC`
    can be read: seeks to the keyframe before that time and demuxes from there to it (at most a GOP)."""
    streams = [s for s in container.streams if s.type in MEDIA_KINDS]
    if not streams or t <= COVERAGE_LEAD_SEC:
        return
    anchor = (container.streams.video or container.streams.audio)[0]
    base: Fraction = anchor.time_base or Fraction(1, av.time_base)
    target = t - COVERAGE_LEAD_SEC
    try:
        container.seek(int(target / base), stream=anchor, backward=True, any_frame=False)
        for packet in container.demux(streams):
            if packet.pts is None:
                if packet.size == 0:
                    break  # the end of the data
                continue
            if float(packet.pts * packet.time_base) >= target:
                return
    except av.error.TimeoutError:
        raise
    except av.error.FFmpegError:
        pass  # the index points past the bytes present (libavformat: "partial file")
    raise SourceUnreadable(
        f"the media's data ends before {t:.3f} s although its index says it lasts longer (a truncated or "
        f"incomplete file); upload the complete file or ask for a range inside the part that is there",
        code="source_truncated",
    )
