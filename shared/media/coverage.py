"""Whether a media file's data reaches the time its index promises: a truncated upload (an MP4 whose moov names
samples past the bytes present) fails once, at the fetcher, with `source_truncated`, instead of cutting short
outputs that look like failed reads and are tried again."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from shared.errors import SourceUnreadable

if TYPE_CHECKING:
    import av

COVERAGE_LEAD_SEC = 0.5  # a packet at or after (t - this) proves the data reaches t (streams end a packet apart)
READ_ON_PACKETS = 32  # packets read on from where the container stands before seeking (a seek is a new range read)
MEDIA_KINDS = ("video", "audio")


def ensure_data_until(container: av.container.InputContainer, t: float, *, read_on: bool = False) -> None:
    """SourceUnreadable (`source_truncated`) unless an audio or video packet at or after `t - COVERAGE_LEAD_SEC`
    can be read: seeks to the keyframe before that time and demuxes from there to it (at most a GOP).

    `read_on`: the container stands near `t` already (the layout read its end): first read on from there, which
    costs no new range request; seek only when that does not reach it."""
    import av.error  # loaded already: the container is open (imported lazily: shared/media/probe.py)

    streams = [s for s in container.streams if s.type in MEDIA_KINDS]
    if not streams or t <= COVERAGE_LEAD_SEC:
        return
    target = t - COVERAGE_LEAD_SEC
    if read_on and _reaches(container, streams, target, READ_ON_PACKETS):
        return
    anchor = (container.streams.video or container.streams.audio)[0]
    base: Fraction = anchor.time_base or Fraction(1, av.time_base)
    try:
        container.seek(int(target / base), stream=anchor, backward=True, any_frame=False)
    except av.error.TimeoutError:
        raise
    except av.error.FFmpegError:
        pass  # the index points past the bytes present: the read below finds nothing
    else:
        if _reaches(container, streams, target, None):
            return
    raise SourceUnreadable(
        f"the media's data ends before {t:.3f} s although its index says it lasts longer (a truncated or "
        f"incomplete file); upload the complete file or ask for a range inside the part that is there",
        code="source_truncated",
    )


def _reaches(container: av.container.InputContainer, streams: list[av.stream.Stream], target: float,
             limit: int | None) -> bool:
    """A packet at or after `target` comes within `limit` packets (None: before the end of the data)."""
    import av.error

    try:
        for count, packet in enumerate(container.demux(streams)):
            if limit is not None and count >= limit:
                return False
            if packet.pts is None:
                if packet.size == 0:
                    return False  # the end of the data
                continue
            if float(packet.pts * packet.time_base) >= target:
                return True
    except av.error.TimeoutError:
        raise
    except av.error.FFmpegError:
        return False  # the index points past the bytes present (libavformat: "partial file")
    return False
