"""The published bus contract, generated from the msgspec structs: one JSON Schema per message and an
AsyncAPI 3.0 document of the subjects (`schemas/`, kept in sync by tests/test_contracts.py).

The output is the same on every Python the project supports: descriptions come from docstrings, which
Python 3.13 stores with their indentation stripped and 3.11 does not, so every description is normalised
with `inspect.cleandoc`; `$defs` are sorted by name; subjects use the default settings, not the environment.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec

from shared.jobs.contracts import (
    PRIORITIES,
    ClipJobMessage,
    JobEvent,
    Priority,
    ProgressEvent,
    StageMessage,
    WireStruct,
)
from shared.jobs.pipeline import ENTRY_STAGE, STAGES
from shared.runtime.bus import Subjects, events_stream
from shared.settings import Settings

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_PREFIX = "urn:clipjet:schema:"  # $id of a message's schema: this prefix and the message's name
SCHEMA_SUFFIX = ".schema.json"
ASYNCAPI_FILE = "asyncapi.json"
ASYNCAPI_VERSION = "3.0.0"
CONTRACT_VERSION = "1.2.0"  # the bus contract's version (info.version): bump the minor part for additions
JSON_INDENT = 2
_DEFAULTS = Settings()  # subjects and stream names as a default installation names them (never the environment)
_SUBJECTS = Subjects(_DEFAULTS.subject_prefix)


@dataclass(frozen=True)
class Channel:
    """Where one bus message travels, for its schema (`x-subject`, `x-delivery`) and the AsyncAPI channel."""

    name: str
    struct: type[WireStruct]
    address: str  # the subject, with {parameters}
    parameters: dict[str, dict[str, Any]]
    delivery: str  # how it is carried (JetStream stream, retention, Nats-Msg-Id; or core NATS)
    action: str  # what a system outside clipjet does with it: "send" or "receive"
    operation: str


_PRIORITY = {"enum": list(PRIORITIES), "description": "The job's priority; workers drain fast, then normal, then bulk."}
_JOB_ID = {"description": "The job's id (a UUID)."}
CHANNELS: tuple[Channel, ...] = (
    Channel(
        "jobs", ClipJobMessage, _SUBJECTS.stage(ENTRY_STAGE, cast(Priority, "{priority}")), {"priority": _PRIORITY},
        f"JetStream stream {_DEFAULTS.nats_stream} (work queue); Nats-Msg-Id `<id>:{ENTRY_STAGE}` drops a repeated "
        f"publish. A message that breaks the contract or the request rules fails its job (row written when there is "
        f"none) with the code POST /api/jobs gives, and ends with a JobEvent.", "send", "publishJob",
    ),
    Channel(
        "stages", StageMessage, _SUBJECTS.stage("{stage}", cast(Priority, "{priority}")),
        {"stage": {"enum": [s for s in STAGES if s != ENTRY_STAGE], "description": "The stage it is addressed to."},
         "priority": _PRIORITY},
        f"JetStream stream {_DEFAULTS.nats_stream} (work queue), between clipjet's own stages; Nats-Msg-Id "
        f"`<jobId>:<stage>`.", "receive", "routeStage",
    ),
    Channel(
        "progress", ProgressEvent, _SUBJECTS.progress("{jobId}"), {"jobId": _JOB_ID},
        "Core NATS (not kept): at most every HEARTBEAT_MS while a stage works.", "receive", "watchProgress",
    ),
    Channel(
        "events", JobEvent, _SUBJECTS.events("{jobId}"), {"jobId": _JOB_ID},
        f"JetStream stream {events_stream(_DEFAULTS)} (limits retention, kept EVENTS_MAX_AGE_SEC, default "
        f"{_DEFAULTS.events_max_age_sec:g} s; a durable consumer created later still reads it); also seen by core "
        f"subscribers. Nats-Msg-Id `<jobId>:end`: one event per job.", "receive", "consumeJobEnd",
    ),
)


def render_schemas() -> dict[str, str]:
    """File name → text: one self-contained JSON Schema per bus message, and the AsyncAPI document."""
    files = {f"{channel.struct.__name__}{SCHEMA_SUFFIX}": _dump(_message_schema(channel)) for channel in CHANNELS}
    files[ASYNCAPI_FILE] = _dump(_asyncapi())
    return files


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _message_schema(channel: Channel) -> dict[str, Any]:
    name = channel.struct.__name__
    schema = _normalised(msgspec.json.schema(channel.struct))
    if "$defs" in schema:
        schema["$defs"] = dict(sorted(schema["$defs"].items()))
    return {
        "$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_ID_PREFIX}{name}", "title": name,
        "x-subject": channel.address, "x-delivery": channel.delivery, **schema,
    }


def _asyncapi() -> dict[str, Any]:
    channels, operations, messages = {}, {}, {}
    for channel in CHANNELS:
        name = channel.struct.__name__
        doc = _clean(channel.struct.__doc__ or "")
        messages[name] = {
            "name": name, "title": name, "summary": doc.split("\n\n", 1)[0].replace("\n", " "),
            "contentType": "application/json",
            "payload": {"schemaFormat": f"application/schema+json;version={SCHEMA_DIALECT.split('/')[-2]}",
                        "schema": {"$ref": f"./{name}{SCHEMA_SUFFIX}"}},
        }
        channels[channel.name] = {
            "address": channel.address, "description": channel.delivery, "parameters": channel.parameters,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[channel.operation] = {
            "action": channel.action, "channel": {"$ref": f"#/channels/{channel.name}"},
            "messages": [{"$ref": f"#/channels/{channel.name}/messages/{name}"}],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "clipjet message bus", "version": CONTRACT_VERSION,
            "description": "Subjects under the default SUBJECT_PREFIX `clips` and stream NATS_STREAM `CLIPS`; both "
                           "are settings. Unknown fields are ignored, so the contract grows by optional fields.",
        },
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats",
                             "description": "NATS with JetStream (NATS_URL)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _normalised(value: Any) -> Any:
    """Every `description` cleaned of docstring indentation (3.11 keeps it, 3.13 strips it at compile time)."""
    if isinstance(value, dict):
        return {k: _clean(v) if k == "description" and isinstance(v, str) else _normalised(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    return value


def _clean(text: str) -> str:
    return inspect.cleandoc(text).strip()


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=JSON_INDENT) + "\n"
