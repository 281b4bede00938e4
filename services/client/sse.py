"""An incremental Server-Sent Events parser (the WHATWG `text/event-stream` rules), fed bytes as they arrive.

Lines end with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the next are one line
end); a line starting with `:` is a comment (`: ping`); `field: value` loses one space after the colon; `data`
lines join with LF; a blank line dispatches the event (none when it has no data); `id` sets the last event id
(kept across events, never with a NUL); an event without `event:` is a `message`.
"""

from __future__ import annotations

from dataclasses import dataclass

_LINE_ENDS = (b"\r\n", b"\n", b"\r")


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str | None  # the last event id when it was dispatched (what Last-Event-ID resumes after)


class SseParser:
    """Feed it the response body's chunks; it returns the events each chunk completes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the previous chunk ended with CR: an LF starting this one belongs to it
        self._event = ""
        self._data: list[str] = []
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            cut = _first_line_end(self._buffer)
            if cut is None:
                return events
            start, end = cut
            if end == len(self._buffer) and self._buffer.endswith(b"\r"):
                self._skip_lf = True  # a CRLF may be split across two chunks
            line, self._buffer = self._buffer[:start], self._buffer[end:]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

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
                self._data.append(value)
            case "id" if "\0" not in value:
                self.last_event_id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> SseEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseEvent(event=event, data="\n".join(data), id=self.last_event_id)


def _first_line_end(buffer: bytes) -> tuple[int, int] | None:
    """(start, end) of the first line end in `buffer`, or None."""
    found = [(at, at + len(mark)) for mark in _LINE_ENDS if (at := buffer.find(mark)) >= 0]
    return min(found, key=lambda cut: (cut[0], -cut[1])) if found else None  # CRLF before its CR alone
