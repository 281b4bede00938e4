"""`/api/uploads`: a signed PUT URL straight into object storage (file bytes never pass the gateway)."""

from __future__ import annotations

import re

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from shared.contracts import UploadSlot, UploadSlotRequest
from shared.ids import uuid7
from shared.resources import Resources

UPLOAD_PREFIX = "uploads/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 100


def upload_key(filename: str) -> str:
    name = _UNSAFE.sub("_", filename).strip("._")[:MAX_NAME_CHARS] or "source"
    return f"{UPLOAD_PREFIX}{uuid7()}/{name}"


class UploadController(Controller):
    path = "/api/uploads"
    tags = ["uploads"]

    @post("/", operation_id="createUploadSlot", status_code=201)
    async def create_slot(
        self, res: NamedDependency[Resources], data: JSONBody[UploadSlotRequest | None] = None
    ) -> UploadSlot:
        """An upload slot: PUT the file to `url` with `headers`, then name `key` in a job's upload source."""
        request = data or UploadSlotRequest()
        key = upload_key(request.filename)
        ttl = res.settings.signed_url_ttl_sec
        url = await res.storage.signed_put_url(key, ttl, request.content_type)
        return UploadSlot(
            key=key, url=url, method="PUT", headers={"Content-Type": request.content_type}, expires_in_sec=ttl
        )
