"""The published bus contract: schemas/ matches the msgspec structs, and the seed's wire names hold."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from shared.contracts import ClipJobMessage, ProgressEvent, StageMessage, UploadSource
from shared.ids import created_at_of, parse_job_id, uuid7
from shared.schemas import render_schemas

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def test_schemas_folder_matches_the_structs() -> None:
    rendered = render_schemas()
    on_disk = {p.name: p.read_text() for p in SCHEMAS_DIR.glob("*.schema.json")}
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
    bad = json.loads(msgspec.json.encode(job)) | {"source": {"type": "ftp"}}
    schema = json.loads((SCHEMAS_DIR / "ClipJobMessage.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
