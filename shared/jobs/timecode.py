"""Times as people write them: seconds (`62.5`) or `[HH:]MM:SS[.ms]` (`1:02.5`, `01:02:03.250`), as users of
yt-dlp's `--download-sections` write them. One strict parser for the CLI and the REST API (startSec, endSec).

Strict on purpose: a field after the first is two digits below 60 (`1:75` and `1:5` are refused, not read as
something else), no sign (no negative times), no exponent, `inf` or `nan`, no spaces, nothing empty.
"""

from __future__ import annotations

import re

MAX_TIMECODE_CHARS = 32  # longest time string accepted (a bound on what the parser reads), characters
_FRACTION = r"(?:\.(?P<fraction>\d{1,9}))?"  # up to nanoseconds
_SECONDS = re.compile(r"(?P<whole>\d+)" + _FRACTION, re.ASCII)
_CLOCK = re.compile(r"(?:(?P<hours>\d+):(?P<minutes_hh>[0-5]\d)|(?P<minutes>\d+)):(?P<seconds>[0-5]\d)" + _FRACTION,
                    re.ASCII)  # ASCII digits only
FORMS = "seconds (62.5) or [HH:]MM:SS[.ms] (1:02.5, 01:02:03.250)"


class InvalidTimecode(ValueError):
    """The text is not a time in one of the accepted forms."""


def parse_timecode(text: str) -> float:
    """`text` in seconds; raises InvalidTimecode (a ValueError) naming the accepted forms."""
    if len(text) > MAX_TIMECODE_CHARS:
        raise InvalidTimecode(f"{text[:MAX_TIMECODE_CHARS]!r}… is too long for a time; write {FORMS}")
    if found := _SECONDS.fullmatch(text):
        return _with_fraction(int(found["whole"]), found["fraction"])
    if found := _CLOCK.fullmatch(text):
        hours = int(found["hours"] or 0)
        minutes = int(found["minutes_hh"] if found["hours"] is not None else found["minutes"])
        return _with_fraction(hours * 3600 + minutes * 60 + int(found["seconds"]), found["fraction"])
    raise InvalidTimecode(f"{text!r} is not a time; write {FORMS}" if text else f"the time is empty; write {FORMS}")


def to_seconds(value: float | str) -> float:
    """A time given as a number of seconds or as a string in one of the accepted forms, in seconds."""
    return parse_timecode(value) if isinstance(value, str) else float(value)


def format_timecode(seconds: float) -> str:
    """`seconds` as `[H:]MM:SS.mmm` for display (62.5 → `1:02.500`)."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    clock = f"{minutes}:{rest / 1000:06.3f}"
    return f"{hours}:{minutes:02d}:{rest / 1000:06.3f}" if hours else clock


def _with_fraction(whole: int, fraction: str | None) -> float:
    return whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
