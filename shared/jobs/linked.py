"""An index file that names its sibling result files by download name (the thumbnails' WebVTT index names the
sprite sheet: `<sheet's name>#xywh=…`), with those names replaced by the siblings' signed URLs: a player
resolving a name relative to the index's own (content-hashed, signed) URL would miss, each file having its own
key and signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

LINKED_SUFFIXES = (".vtt",)  # result files served with their siblings linked (text indexes)
Sign = Callable[[str], Awaitable[str]]  # a sibling's download name → its signed URL


def linkable(filename: str) -> bool:
    return filename.endswith(LINKED_SUFFIXES)


async def linked(text: str, siblings: Mapping[str, str], sign: Sign) -> str:
    """`text` with each line that is a sibling's download name, or starts with it and `#` (a media fragment),
    starting with that sibling's signed URL instead; `siblings`: download name → role, other files' only."""
    urls: dict[str, str] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        name = line.split("#", 1)[0].rstrip("\r")
        if name in siblings:
            if name not in urls:
                urls[name] = await sign(name)
            lines[i] = urls[name] + line[len(name):]
    return "\n".join(lines)
