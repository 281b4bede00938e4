"""What `clipjet clip` shows while it works: a live rich bar on a terminal, plain lines otherwise (a log, a pipe).

Both show the upload (bytes), the job (status, stage, progress) and the downloads; plain lines are written
only when something changed: a new status or stage, or progress past the next PLAIN_STEP.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, TextIO

from .follow import Update
from .text import clean
from .upload import OnBytes

PLAIN_STEP = 0.1  # plain lines report the job's progress in steps of this fraction
MIB = 1024 * 1024


class Display(Protocol):
    def line(self, text: str) -> None: ...
    def upload(self, name: str, total: int) -> OnBytes: ...
    def job(self, update: Update) -> None: ...
    def download(self, name: str, total: int | None) -> OnBytes: ...
    def close(self) -> None: ...


def make_display(stream: TextIO, *, live: bool) -> Display:
    """A live bar on `stream` when `live` (a terminal), else plain lines."""
    return RichDisplay(stream) if live else PlainDisplay(stream)


class PlainDisplay:
    """One line per change, flushed at once (a reader tailing a log sees it)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last: tuple[str, str | None] | None = None
        self._next_pct = 0.0
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def upload(self, name: str, total: int) -> OnBytes:
        self.line(f"upload    {name} ({total / MIB:.1f} MiB)")
        return _steps(self, f"upload    {name}", total)

    def job(self, update: Update) -> None:
        where = (update.status, update.stage)
        if where != self._last or update.pct >= self._next_pct:
            self._last = where
            self._next_pct = (int(update.pct / PLAIN_STEP) + 1) * PLAIN_STEP
            stage = f" {clean(update.stage)}" if update.stage else ""
            self.line(f"progress  {clean(update.status)}{stage} {update.pct:.0%}")

    def download(self, name: str, total: int | None) -> OnBytes:
        self.line(f"download  {name}" + (f" ({total / MIB:.1f} MiB)" if total else ""))
        return lambda _: None

    def close(self) -> None:
        return None


def _steps(display: PlainDisplay, label: str, total: int) -> OnBytes:
    """A byte counter that writes a line at each quarter."""
    state = {"done": 0, "next": 0.25}

    def count(sent: int) -> None:
        state["done"] += sent
        if total and state["done"] / total >= state["next"]:
            display.line(f"{label} {state['done'] * 100 // total}%")  # floored: 100% only once all is sent
            state["next"] = int(state["done"] / total * 4 + 1) / 4

    return count


class RichDisplay:
    """rich's live progress bars, one per step (upload, job, each download)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.console = Console(file=stream)
        self.progress = Progress(
            TextColumn("{task.description:<10}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}", markup=False), console=self.console, transient=False,
        )
        self._job: Any = None
        self.progress.start()

    def line(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def upload(self, name: str, total: int) -> OnBytes:
        return self._bytes("upload", name, total)

    def job(self, update: Update) -> None:
        info = " ".join(clean(part) for part in (update.status, update.stage) if part)
        if self._job is None:
            self._job = self.progress.add_task("job", total=1.0, info=info)
        self.progress.update(self._job, completed=update.pct, info=info)

    def download(self, name: str, total: int | None) -> OnBytes:
        if self._job is not None:
            self.progress.update(self._job, completed=1.0, info="done")
        return self._bytes("download", name, total)

    def _bytes(self, label: str, name: str, total: int | None) -> OnBytes:
        task = self.progress.add_task(label, total=total, info=name)
        return lambda sent: self.progress.advance(task, sent)

    def close(self) -> None:
        self.progress.stop()
