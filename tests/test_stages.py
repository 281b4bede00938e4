"""One list of stages: the registry, the Procfile and the stack derive from shared.jobs.pipeline; INSTALLED_STAGES makes
`stage_unavailable` fire; the stack's --scale and its per-folder identity (S3 secret, schema) and demo URL."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from services.registry import STAGES, service_commands
from services.stack.localstack import MAX_SCALE, parse_scale
from services.stack.stackdemo import redact_url
from services.stack.stackidentity import IDENTITY_FILE, SCHEMA_PREFIX, stack_identity
from shared.jobs import pipeline
from shared.settings import load_settings
from tests.conftest import Workers, wait_for_job
from tests.http_source import MediaServer

REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 60.0
REENCODE_START, REENCODE_END = 7.5, 7.9  # no keyframe inside (one every 2 s): only the encoder can cut it
WITHOUT_ENCODER = "fetch,trim,transcribe,upload"


def test_registry_and_procfile_follow_the_stage_list() -> None:
    assert tuple(STAGES) == pipeline.STAGES == tuple(pipeline.SERVICE_PACKAGES)
    assert all(spec.name == name for name, spec in STAGES.items())
    procfile = [line for line in (REPO / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    expected = [f"{name}: python -m services {' '.join(args)}" for name, args in service_commands().items()]
    assert procfile == expected, "Procfile: one line per process of services.registry.service_commands()"


def test_installed_stages_setting() -> None:
    assert pipeline.installed_stages("") == pipeline.STAGES
    assert pipeline.installed_stages(" fetch, trim ,upload,trim") == ("fetch", "trim", "upload")
    assert pipeline.unavailable(pipeline.REENCODE_ROUTE, ("fetch", "trim", "upload")) == (pipeline.ENCODE,)
    with pytest.raises(msgspec.ValidationError, match="INSTALLED_STAGES names encoder, which are no stages"):
        load_settings({"INSTALLED_STAGES": "fetch,encoder"})


@pytest.mark.settings(installed_stages=WITHOUT_ENCODER)
async def test_a_job_needing_a_stage_not_run_fails_with_stage_unavailable(
    client: AsyncTestClient[Any], workers: Workers, sample_video: Path
) -> None:
    workers.start(*pipeline.installed_stages(WITHOUT_ENCODER))
    with MediaServer(sample_video.parent) as origin:
        url = origin.url(sample_video.name)
        needs_encoder = await client.post("/api/jobs", json={
            "source": {"type": "url", "url": url}, "startSec": REENCODE_START, "endSec": REENCODE_END,
            "precision": "frame"})
        plain = await client.post("/api/jobs", json={"source": {"type": "url", "url": url}, "startSec": 2.0,
                                                     "endSec": 4.0})
        failed = await wait_for_job(client, needs_encoder.json()["id"])
        done = await wait_for_job(client, plain.json()["id"])
    assert (failed["status"], failed["errorCode"], failed["attempts"]) == ("failed", "stage_unavailable", 1)
    assert "encode" in failed["errorMessage"] and "does not run" in failed["errorMessage"]
    assert done["status"] == "done"


def test_parse_scale() -> None:
    assert parse_scale("trim=2, fetch=3", pipeline.STAGES) == {**dict.fromkeys(pipeline.STAGES, 1), "trim": 2,
                                                               "fetch": 3}
    assert parse_scale("", ("fetch", "upload")) == {"fetch": 1, "upload": 1}
    for bad, says in (("encode=2", "not a stage this stack runs"), ("trim=0", "STAGE=N"), ("trim", "STAGE=N"),
                      (f"trim={MAX_SCALE + 1}", "STAGE=N"), ("trim=-1", "STAGE=N")):
        with pytest.raises(ValueError, match=says):
            parse_scale(bad, ("fetch", "trim", "upload"))


def test_stack_refuses_a_bad_scale_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "STACK_SCALE": "trim=2"}
    done = subprocess.run([sys.executable, "-m", "services", "stack", "--scale", "fetch=2,transcode=2"], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert done.returncode == 2 and "'transcode' is not a stage this stack runs" in done.stderr
    assert not (tmp_path / "data").exists()


def test_each_data_folder_has_its_own_secret_and_schema(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    one = stack_identity(first)
    assert stack_identity(first) == one  # kept in the folder
    other = stack_identity(second)
    assert other.stack_id != one.stack_id and other.s3_secret_key != one.s3_secret_key
    assert one.schema == SCHEMA_PREFIX + one.stack_id and len(one.s3_secret_key) >= 40
    assert one.s3_secret_key != load_settings({}).s3_secret_key
    assert stat.S_IMODE((first / IDENTITY_FILE).stat().st_mode) == 0o600
    (first / IDENTITY_FILE).write_text('{"stackId": "x\\"; DROP SCHEMA public", "s3SecretKey": "k"}')
    replaced = stack_identity(first)  # an altered id never reaches SQL: a new identity instead
    assert replaced.stack_id not in (one.stack_id, other.stack_id) and replaced.stack_id.isalnum()


def test_demo_url_is_printed_without_its_signature() -> None:
    signed = ("http://127.0.0.1:18333/clipjet/results/sha256/ab/abc/clip.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Credential=clipjet%2F20261201&X-Amz-Signature=0123abcd")
    shown = redact_url(signed)
    assert shown.startswith("http://127.0.0.1:18333/clipjet/results/sha256/ab/abc/clip.mp4?")
    assert "X-Amz" not in shown and "0123abcd" not in shown and "clipjet%2F" not in shown
