"""The published JSON Schemas of the bus contract, generated from the msgspec structs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.contracts import BUS_MESSAGES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def render_schemas() -> dict[str, str]:
    """File name → JSON text, one self-contained schema per bus message."""
    files = {}
    for struct in BUS_MESSAGES:
        schema = msgspec.json.schema(struct)
        document = {"$schema": SCHEMA_DIALECT, "title": struct.__name__, **schema}
        text = msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
        files[f"{struct.__name__}.schema.json"] = text
    return files


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written
