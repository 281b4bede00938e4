"""An incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules), fed bytes as they arrive.

Lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the next are one line
end); a line starting with `:` is a comment (`: ping`); `field: value` loses one space after the colon; `data`
lines join with LF; a blank line dispatches the event (none when it has no data); `id` sets the last event id
(kept across events, never with a NUL); an event without `event:` is a `message`.

A line longer than MAX_LINE_BYTES, or an event whose data grows past MAX_EVENT_BYTES, raises SseTooLarge: the
parser holds at most one line and one event, and reads each byte once (time linear in the stream's length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE_BYTES = 1024 * 1024  # longest line the parser holds, bytes
MAX_EVENT_BYTES = 1024 * 1024  # most data (its lines joined) one event may carry, bytes
_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseTooLarge(ValueError):
    """The stream has a line or an event past the parser's bounds."""


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str | None  # the last event id when it was dispatched (what Last-Event-ID resumes after)


class SseParser:
    """Feed it the response body's chunks; it returns the events each chunk completes."""

    def __init__(self) -> None:
        self._buffer = b""  # the start of a line whose end has not come yet
        self._skip_lf = False  # the previous chunk ended with CR: an LF starting this one belongs to it
        self._event = ""
        self._data: list[str] = []
        self._data_bytes = 0
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SseEvent] = []
        start = 0
        for end in _LINE_END.finditer(buffer):
            if end.start() - start > MAX_LINE_BYTES:
                raise SseTooLarge(f"an event stream line is longer than {MAX_LINE_BYTES} bytes")
            event = self._line(buffer[start:end.start()].decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
            start = end.end()
            if start == len(buffer) and end.group() == b"\r":
                self._skip_lf = True  # a CRLF may be split across two chunks
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_LINE_BYTES:
            self._buffer = b""
            raise SseTooLarge(f"an event stream line is longer than {MAX_LINE_BYTES} bytes")
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        match field:
            case "event":
                self._event = value
            case "data":
                self._data_bytes += len(value) + 1
                if self._data_bytes > MAX_EVENT_BYTES:
                    raise SseTooLarge(f"an event's data is larger than {MAX_EVENT_BYTES} bytes")
                self._data.append(value)
            case "id" if "\0" not in value:
                self.last_event_id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> SseEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data, self._data_bytes = "", [], 0
        if not data:
            return None
        return SseEvent(event=event, data="\n".join(data), id=self.last_event_id)

