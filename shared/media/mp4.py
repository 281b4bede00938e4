"""Read an MP4's duration from its `mvhd` box: no process to spawn for a file we just wrote."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

HEADER = struct.Struct(">I4s")  # box size, box type
LARGE_SIZE = struct.Struct(">Q")  # 64-bit size when the 32-bit one is 1
VERSION_FLAGS_BYTES = 4
MVHD_V0 = struct.Struct(">IIII")  # creation, modification, timescale, duration
MVHD_V1 = struct.Struct(">QQIQ")  # the same, 64-bit times


def _header(head: bytes, pos: int, limit: int) -> tuple[bytes, int, int] | None:
    """(type, body offset, end offset) of the box at `pos` in a buffer whose data ends at `limit`."""
    if len(head) < HEADER.size:
        return None
    size, kind = HEADER.unpack_from(head)
    header = HEADER.size
    if size == 1 and len(head) >= HEADER.size + LARGE_SIZE.size:
        (size,) = LARGE_SIZE.unpack_from(head, HEADER.size)
        header += LARGE_SIZE.size
    elif size == 0:
        size = limit - pos
    if size < header:
        return None
    return kind, pos + header, min(pos + size, limit)


def _find(handle: BinaryIO, kind: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(body offset, end offset) of the first box of `kind` between start and end, reading only headers."""
    pos = start
    while pos < end:
        handle.seek(pos)
        box = _header(handle.read(HEADER.size + LARGE_SIZE.size), pos, end)
        if box is None:
            return None
        if box[0] == kind:
            return box[1], box[2]
        pos = box[2]
    return None


def mp4_duration(path: Path) -> float:
    """Presentation duration in seconds from moov/mvhd; raises ValueError when the file has none."""
    with path.open("rb") as handle:
        moov = _find(handle, b"moov", 0, path.stat().st_size)
        mvhd = _find(handle, b"mvhd", *moov) if moov else None
        if mvhd is None:
            raise ValueError(f"{path} has no moov/mvhd box")
        handle.seek(mvhd[0])
        body = handle.read(VERSION_FLAGS_BYTES + MVHD_V1.size)
    layout = MVHD_V1 if body[0] == 1 else MVHD_V0
    _, _, timescale, duration = layout.unpack_from(body, VERSION_FLAGS_BYTES)
    if not timescale:
        raise ValueError(f"{path} has a zero timescale")
    return duration / timescale
