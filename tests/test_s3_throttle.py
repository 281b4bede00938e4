"""S3 throttling: multipart uploads through a proxy that answers 503 SlowDown lower their concurrency, retry,
raise it again, and store the right bytes (the real SeaweedFS behind the proxy checks every signature)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest

from shared.runtime.resources import Resources
from shared.settings import Settings
from shared.storage.s3 import MIB, open_storage
from tests.s3_fault_proxy import FaultProxy, Request

PART_MB = 5  # the smallest part S3 (and SeaweedFS) accepts
PARTS = 10
CONCURRENCY = 4
BURST = 6  # part-upload tries answered 503 SlowDown at the start of the upload
STUBBORN_PART = 8  # this part is refused more times than botocore tries, so the storage layer's own retry is needed
STUBBORN_TRIES = 3


class Burst:
    """Fail the first BURST part-upload tries, and the first STUBBORN_TRIES tries of one part."""

    def __init__(self) -> None:
        self.part_tries = 0
        self.stubborn_tries = 0

    def __call__(self, request: Request) -> bool:
        if not request.is_part_upload:
            return False
        self.part_tries += 1
        if f"partNumber={STUBBORN_PART}&" in request.target + "&" and self.part_tries > BURST:
            self.stubborn_tries += 1
            return self.stubborn_tries <= STUBBORN_TRIES
        return self.part_tries <= BURST


@pytest.mark.chaos
@pytest.mark.settings(s3_multipart_part_mb=PART_MB, s3_multipart_concurrency=CONCURRENCY, s3_max_attempts=2)
async def test_multipart_upload_slows_down_on_503_and_speeds_up_again(
    settings: Settings, resources: Resources, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(PARTS * PART_MB * MIB - 12345))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    upstream = urlsplit(settings.s3_endpoint_url).port
    assert upstream is not None
    rule = Burst()
    async with FaultProxy(upstream, rule) as proxy:
        through_proxy = msgspec.structs.replace(settings, s3_endpoint_url=proxy.url)
        async with open_storage(through_proxy) as storage:
            size = await storage.put_file("throttled/big.bin", source, "application/octet-stream", {"sha256": digest})
            limit = storage.part_limit
    assert size == source.stat().st_size
    copy = tmp_path / "copy.bin"
    await resources.storage.download("throttled/big.bin", copy)  # straight from S3, not through the proxy
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    assert len(proxy.failed) == BURST + STUBBORN_TRIES
    assert limit.throttles >= len(proxy.failed)  # every 503, botocore's retried tries included
    assert limit.history[0] == CONCURRENCY
    assert min(limit.history) < CONCURRENCY  # went down on the burst ...
    lowest = limit.history.index(min(limit.history))
    assert max(limit.history[lowest:]) > min(limit.history)  # ... and back up after successes
