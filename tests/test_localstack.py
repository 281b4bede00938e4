"""`clipjet stack --demo --exit-after-demo` end to end: its own servers on free ports, a real demo clip."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from services.stack.devstack import free_port, postgres_reachable
from services.stack.localstack import CLIP_NAME, NATS_PORT_ENV, S3_PORT_ENV, _effective, read_stack_env
from services.stack.stackidentity import stack_identity
from shared.settings import load_settings, settings_env
from tests.conftest import DEFAULT_PG_URL
from tests.media import codecs, probe

STACK_TIMEOUT_SEC = 150  # servers, four services, a 30 s 720p sample encode and the job on 2 busy cores
STOP_WAIT_SEC = 30
CLIP_MIN_SEC, CLIP_MAX_SEC = 7.45, 7.55  # asked 12.5-20 s: 7.5 s, frame-accurate by default (within a frame)


async def _drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def test_the_stack_serves_every_ops_port_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As everything else the stack starts: the services' ops ports (METRICS_HOST) are not on every address."""
    monkeypatch.delenv("METRICS_HOST", raising=False)
    settings = load_settings({})
    assert settings.metrics_host == "0.0.0.0"  # the default outside the stack (a pod is scraped)
    effective = _effective(settings, tmp_path, demo=False)
    assert settings_env(effective)["METRICS_HOST"] == "127.0.0.1"  # what each service process is started with


def test_stack_demo_makes_a_clip(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    schema = f"test_stack_{secrets.token_hex(4)}"
    # NATS_URL set would mean "reuse that one"; S3_SECRET_KEY set, "use that one"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "S3_SECRET_KEY")}
    env.update(
        DATA_DIR=str(data_dir), DB_SCHEMA=schema, GATEWAY_PORT=str(free_port()),
        DATABASE_URL=os.environ.get("CLIPJET_TEST_DATABASE_URL", DEFAULT_PG_URL),
        **{NATS_PORT_ENV: str(free_port()), S3_PORT_ENV: str(free_port())},
    )
    proc = subprocess.Popen([sys.executable, "-m", "services", "stack", "--demo", "--exit-after-demo"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=STACK_TIMEOUT_SEC)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the stack stops its children and servers
        try:
            output, _ = proc.communicate(timeout=STOP_WAIT_SEC)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"the stack did not finish within {STACK_TIMEOUT_SEC} s:\n{output[-6000:]}")
    finally:
        stack_env = data_dir / "stack.env"
        db_url = read_stack_env(stack_env).get("DATABASE_URL") if stack_env.exists() else None
        if db_url and postgres_reachable(db_url):  # a reused server outlives the stack: leave no schema behind
            asyncio.run(_drop_schema(db_url, schema))
    assert proc.returncode == 0, output[-6000:]

    clip = data_dir / CLIP_NAME
    assert clip.is_file(), output[-3000:]
    info = probe(clip)
    assert "mp4" in info["format"]["format_name"]
    assert codecs(info) == {"video": "h264", "audio": "aac"}
    assert CLIP_MIN_SEC <= float(info["format"]["duration"]) <= CLIP_MAX_SEC
    assert str(clip) in output and "status done" in output
    assert "metrics   gateway :" in output and "upload.1 :" in output  # each process's own ops port
    assert "X-Amz-Signature" not in output and "X-Amz-Credential" not in output  # no signed URL printed
    secret = read_stack_env(data_dir / "stack.env")["S3_SECRET_KEY"]
    assert secret == stack_identity(data_dir).s3_secret_key != load_settings({}).s3_secret_key  # not a constant
    # the README's `set -a; . .data/stack.env; set +a` gives a shell every value as written, without errors
    script = f'set -a; . "{data_dir / "stack.env"}"; set +a; printf "%s\\n%s" "$SUBS_STYLE" "$CLIPJET_API_KEY"'
    sourced = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert sourced.stderr == "" and sourced.returncode == 0, sourced.stderr
    env_values = read_stack_env(data_dir / "stack.env")
    assert sourced.stdout.split("\n") == [load_settings({}).subs_style, env_values["CLIPJET_API_KEY"]]
    assert env_values["CLIPJET_API_KEY"].startswith("cj_")
