"""The start the gateway CPU benches share: bench.gateway's stack (AUTH on, one key), one uploaded source, a done
job to GET, and the POST /api/jobs body they send."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.gateway import CLIP, DATA, SOURCE_SEC, Stack, _done_job, _prepare, gateway_stack
from shared.media.testpattern import make_test_pattern


@dataclass(frozen=True)
class Target:
    stack: Stack  # its gateway still running, no worker running
    work: Path  # a scratch folder (wrk's scripts, profiles), removed with the stack
    token: str  # the API key's bearer token
    key: str  # the uploaded source's key
    job_id: str  # a done job (the GET target); "" when none was asked for

    @property
    def post_body(self) -> dict[str, Any]:
        """What every POST /api/jobs of the benches asks for: a CLIP of the source, keyframe precision."""
        return {"source": {"type": "upload", "key": self.key}, "startSec": CLIP[0], "endSec": CLIP[1],
                "precision": "keyframe"}


@contextmanager
def gateway_target(processes: int, done_job: bool = True, private_postgres: bool = False) -> Iterator[Target]:
    """The stack with `processes` gateway processes up, the source uploaded and (`done_job`) one job run to done by
    the workers, which are stopped again; everything is removed on the way out. `private_postgres`: a PostgreSQL
    of the stack's own, not the machine's (whose connections other work may have used up)."""
    DATA.mkdir(parents=True, exist_ok=True)
    source = make_test_pattern(DATA / f"source-{SOURCE_SEC}s-360p.mp4", seconds=SOURCE_SEC)
    with (tempfile.TemporaryDirectory(dir=DATA.resolve()) as tmp,
          gateway_stack(Path(tmp) / "stack", private_postgres) as stack):
        stack.settings = msgspec.structs.replace(stack.settings, gateway_processes=processes)
        stack.start_gateway()
        token, key = asyncio.run(_prepare(stack, source))
        job_id = ""
        if done_job:
            stack.start_workers()
            job_id = asyncio.run(_done_job(stack, token, key))
            stack.stop_workers()
        yield Target(stack, Path(tmp), token, key, job_id)
