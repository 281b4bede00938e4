"""Object storage against the real S3 server: multipart, server-side copy, signed URLs that expire."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import httpx
import pytest

from shared.errors import Permanent, StorageError
from shared.runtime.resources import Resources
from shared.storage.s3 import result_key, sha256_file

MIB = 1024 * 1024
SHORT_TTL_SEC = 3


@pytest.mark.settings(s3_multipart_part_mb=5, s3_multipart_concurrency=3)
async def test_multipart_put_and_copy_keep_bytes_and_hash(resources: Resources, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(12 * MIB + 123))  # three parts
    digest = await sha256_file(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    storage = resources.storage
    await storage.put_file("staging/j/big.bin", path, "application/octet-stream", {"sha256": digest})
    head = await storage._client.head_object(Bucket=storage.bucket, Key="staging/j/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    key = result_key(digest, "big.bin")
    await storage.copy("staging/j/big.bin", key, "application/octet-stream")
    info = await storage.head(key)
    assert info is not None and (info.size, info.sha256) == (path.stat().st_size, digest)
    copy = tmp_path / "copy.bin"
    await storage.download(key, copy)
    assert copy.read_bytes() == path.read_bytes()


async def test_reads_of_a_missing_object_say_so_and_small_reads_are_bounded(
    resources: Resources, tmp_path: Path
) -> None:
    """HEAD and a small read of a missing object answer None; a download or a hash of it is a StorageError; a
    small read returns the bytes, up to its bound."""
    storage = resources.storage
    missing = "staging/j/missing.bin"
    assert await storage.head(missing) is None
    assert await storage.read_small(missing, MIB) is None
    with pytest.raises(StorageError, match="missing"):
        await storage.download(missing, tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()  # nothing written for an object that is not there
    with pytest.raises(StorageError, match="missing"):
        await storage.sha256_object(missing)
    path = tmp_path / "small.txt"
    path.write_bytes(b"twelve bytes")
    await storage.put_file("staging/j/small.txt", path, "text/plain", {})
    assert await storage.read_small("staging/j/small.txt", 12) == b"twelve bytes"
    assert await storage.sha256_object("staging/j/small.txt") == hashlib.sha256(b"twelve bytes").hexdigest()
    with pytest.raises(Permanent) as refused:
        await storage.read_small("staging/j/small.txt", 11)
    assert refused.value.code == "file_too_large"


async def test_signed_urls_expire_and_cannot_be_tampered(resources: Resources) -> None:
    storage = resources.storage
    await storage._client.put_object(Bucket=storage.bucket, Key="results/x/clip.mp4", Body=b"clip")
    url = await storage.signed_get_url("results/x/clip.mp4", ttl_sec=SHORT_TTL_SEC)
    other = url.replace("results/x/clip.mp4", "results/y/clip.mp4")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == b"clip"
        assert (await http.get(other)).status_code == 403
        bare = url.split("?")[0]
        assert (await http.get(bare)).status_code == 403  # no anonymous reads
        await asyncio.sleep(SHORT_TTL_SEC + 1.5)  # X-Amz-Date has whole seconds
        assert (await http.get(url)).status_code == 403  # expired
