"""The published bus contract: schemas/ matches the msgspec structs, and the seed's wire names hold."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.jobs import contracts
from shared.jobs.contracts import ClipJobMessage, ProgressEvent, StageMessage, UploadSource
from shared.jobs.ids import created_at_of, parse_job_id, uuid7
from shared.jobs.jobrules import refusal_for_decode_error
from shared.jobs.schemas import render_schemas

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def test_schemas_folder_matches_the_structs() -> None:
    rendered = render_schemas()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS_DIR.glob("*.json")}
    assert set(on_disk) == set(rendered), "run `make schemas` and commit schemas/"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} is stale: run `make schemas` and commit schemas/"


def test_seed_wire_names_decode() -> None:
    seed = {
        "id": str(uuid7()), "source": {"type": "upload", "key": "uploads/x/a.mp4"}, "startSec": 1.5,
        "endSec": 9, "subs": {"enabled": True, "burnIn": False, "lang": "auto"}, "priority": "fast",
        "someFutureField": {"ignored": True},
    }
    job = msgspec.json.decode(json.dumps(seed), type=ClipJobMessage)
    assert job.source == UploadSource(key="uploads/x/a.mp4")
    assert (job.start_sec, job.end_sec, job.subs.enabled, job.priority) == (1.5, 9.0, True, "fast")
    assert json.loads(msgspec.json.encode(job))["startSec"] == 1.5


@pytest.mark.parametrize("bad", [
    {"source": {"type": "ftp", "url": "ftp://x"}},
    {"id": "not-a-uuid"},
    {"priority": "urgent"},
])
def test_invalid_bus_messages_are_refused(bad: dict) -> None:
    message = {"id": str(uuid7()), "source": {"type": "url", "url": "https://e.example/a.mp4"}, "startSec": 0,
               "endSec": 1, **bad}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(message), type=ClipJobMessage)


def test_progress_event_wire_names() -> None:
    event = ProgressEvent(job_id="j", pct=0.5, stage="trim")
    assert json.loads(msgspec.json.encode(event)) == {"jobId": "j", "pct": 0.5, "stage": "trim"}


def test_stage_message_forward_moves_the_route() -> None:
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key="k"), start_sec=0, end_sec=1)
    message = StageMessage(job=job, route=["trim", "upload"], done=["fetch"])
    following = message.forward()
    assert (following.route, following.done) == (["upload"], ["fetch", "trim"])


def test_uuid7_carries_its_creation_time() -> None:
    job_id = uuid7(now_ms=1_764_000_000_123)
    assert job_id.version == 7
    created = created_at_of(job_id)
    assert created is not None and int(created.timestamp() * 1000) == 1_764_000_000_123
    assert parse_job_id("nope") is None


def test_encoded_messages_validate_against_published_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    job = ClipJobMessage(id=str(uuid7()), source=UploadSource(key="uploads/a"), start_sec=2, end_sec=4)
    stage = StageMessage(job=job, route=["upload"], done=["fetch", "trim"])
    for struct, value in ((ClipJobMessage, job), (StageMessage, stage)):
        schema = json.loads((SCHEMAS_DIR / f"{struct.__name__}.schema.json").read_text())
        jsonschema.validate(json.loads(msgspec.json.encode(value)), schema)
    schema = json.loads((SCHEMAS_DIR / "ClipJobMessage.schema.json").read_text())
    for change in ({"source": {"type": "ftp"}}, {"startSec": -1}, {"endSec": 0}, {"id": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(json.loads(msgspec.json.encode(job)) | change, schema)


def _wire_structs() -> list[type]:
    return [v for v in vars(contracts).values() if isinstance(v, type) and issubclass(v, contracts.WireStruct)]


@pytest.mark.parametrize("style", ["stripped", "indented"])
def test_rendering_does_not_depend_on_docstring_indentation(style: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.13 strips docstring indentation at compile time, 3.11 keeps it: both must render the same bytes."""
    expected = render_schemas()
    for struct in _wire_structs():
        doc = inspect.cleandoc(struct.__doc__ or "")
        if style == "indented" and "\n" in doc:  # as 3.11 keeps a docstring whose closing quotes stand alone
            doc = doc.replace("\n", "\n        ") + "\n    "
        monkeypatch.setattr(struct, "__doc__", doc)
    assert render_schemas() == expected


def test_schemas_carry_id_subject_and_bounds() -> None:
    rendered = {name: json.loads(text) for name, text in render_schemas().items()}
    job = rendered["ClipJobMessage.schema.json"]
    assert job["$id"] == "urn:clipjet:schema:ClipJobMessage"
    assert job["x-subject"] == "clips.fetch.{priority}"
    fields = job["$defs"]["ClipJobMessage"]["properties"]
    assert fields["startSec"]["minimum"] == 0 and fields["endSec"]["exclusiveMinimum"] == 0
    event = rendered["JobEvent.schema.json"]
    assert event["x-subject"] == "clips.events.{jobId}" and "CLIPS_EVENTS" in event["x-delivery"]
    assert rendered["ProgressEvent.schema.json"]["$defs"]["ProgressEvent"]["properties"]["pct"]["maximum"] == 1
    assert len({schema["$id"] for name, schema in rendered.items() if name.endswith(".schema.json")}) == 4


def test_asyncapi_document_is_consistent() -> None:
    rendered = render_schemas()
    doc = json.loads(rendered["asyncapi.json"])
    assert doc["asyncapi"].startswith("3.")

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [*([node["$ref"]] if "$ref" in node else []), *(r for v in node.values() for r in refs(v))]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(doc):
        if ref.startswith("./"):
            assert ref[2:] in rendered, ref
            continue
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    for channel in doc["channels"].values():
        assert set(re.findall(r"{(\w+)}", channel["address"])) == set(channel["parameters"])
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"clips.fetch.{priority}", "clips.events.{jobId}", "clips.progress.{jobId}"} <= addresses


@pytest.mark.parametrize(("bad", "code"), [
    ({"startSec": -1}, "start_negative"),
    ({"endSec": 0}, "end_before_start"),
    ({"startSec": "soon"}, "invalid_field"),
    ({"source": {"type": "ftp", "url": "ftp://x"}}, "unknown_source_type"),
    ({"priority": "urgent"}, "invalid_field"),
])
def test_bounds_are_enforced_by_decoding_with_the_gateways_codes(bad: dict, code: str) -> None:
    message = {"id": str(uuid7()), "source": {"type": "url", "url": "https://e.example/a.mp4"}, "startSec": 0,
               "endSec": 1, **bad}
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.json.decode(json.dumps(message), type=ClipJobMessage)
    assert refusal_for_decode_error(refused.value).code == code
