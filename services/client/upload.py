"""A local file into an upload slot (`POST /api/uploads`): one signed PUT, or, when the slot is multipart (the
file is over the gateway's UPLOAD_SINGLE_PUT_MAX_MB), each part to its signed URL and then
`POST /api/uploads/complete`. A part that fails is sent again (PART_TRIES in all); before completing, the
client asks which parts storage holds and sends any that are missing (the resume the API offers)."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from shared.jobs.contracts import UploadSlot

from .api import Api, ApiError

CHUNK_BYTES = 1024 * 1024  # read and send a file this much at a time, bytes
PART_TRIES = 3  # tries of one part's PUT before the upload fails
PART_RETRY_PAUSE_SEC = 1.0  # pause before a part's next try (doubles), s
PARALLEL_PARTS = 4  # parts in flight at once
DEFAULT_CONTENT_TYPE = "application/octet-stream"

OnBytes = Callable[[int], None]  # called with each number of bytes sent


def upload_file(api: Api, path: Path, on_bytes: OnBytes) -> str:
    """Upload `path`; the key to name in the job's upload source."""
    size = path.stat().st_size
    content_type = mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
    slot = api.create_upload_slot(size, path.name, content_type)
    if slot.upload_id is None:
        if slot.url is None:
            raise ApiError(0, "invalid_slot", "the upload slot names neither a URL nor parts")
        _put(api, slot.url, slot.headers, path, 0, size, on_bytes)
        return slot.key
    _put_parts(api, slot, path, size, on_bytes)
    return api.complete_upload(slot.key, slot.upload_id).key


def _put_parts(api: Api, slot: UploadSlot, path: Path, size: int, on_bytes: OnBytes) -> None:
    part_size = slot.part_size or size
    spans = {part.part_number: ((part.part_number - 1) * part_size, part.url) for part in slot.parts}

    def send(number: int) -> None:
        offset, url = spans[number]
        _put(api, url, {}, path, offset, min(part_size, size - offset), on_bytes)

    with ThreadPoolExecutor(PARALLEL_PARTS) as pool:
        list(pool.map(send, sorted(spans)))
    stored = {part.part_number for part in api.upload_status(slot.key, slot.upload_id or "").parts}
    for number in sorted(set(spans) - stored):  # storage lost a part it acknowledged: send it again
        send(number)


def _put(api: Api, url: str, headers: dict[str, str], path: Path, offset: int, length: int,
         on_bytes: OnBytes) -> None:
    """PUT `length` bytes of `path` from `offset` (the URL is signed for that exact length), with retries."""
    pause = PART_RETRY_PAUSE_SEC
    for attempt in range(1, PART_TRIES + 1):
        sent = [0]  # bytes of this try, taken back from the display when it fails
        try:
            response = api.storage.put(url, content=_counted(path, offset, length, on_bytes, sent),
                                       headers={**headers, "Content-Length": str(length)})
        except httpx.HTTPError as exc:
            failure = ApiError(0, "upload_failed", f"the upload to object storage broke off: {exc}")
        else:
            if response.status_code < 300:
                return
            failure = ApiError(response.status_code, "upload_failed",
                               f"object storage refused the upload: {response.text[:300]}")
            if response.status_code < 500:
                raise failure  # a refusal (403 signature, 412 already written) does not pass on a retry
        on_bytes(-sent[0])  # this try's bytes are sent again
        if attempt == PART_TRIES:
            raise failure
        time.sleep(pause)
        pause *= 2


def _counted(path: Path, offset: int, length: int, on_bytes: OnBytes, sent: list[int]) -> Iterator[bytes]:
    for chunk in _read(path, offset, length):
        sent[0] += len(chunk)
        on_bytes(len(chunk))
        yield chunk


def _read(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(CHUNK_BYTES, length))
            if not chunk:
                raise ApiError(0, "upload_failed", f"{path} became shorter while it was uploaded")
            length -= len(chunk)
            yield chunk
