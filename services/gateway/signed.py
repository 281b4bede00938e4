"""Signed GET URLs of result files, each reused for SIGNED_URL_REUSE_SEC (signing costs more than the rest of a
`GET /api/jobs/{id}`): a client polling a done job gets the same URL, with the lifetime it has left."""

from __future__ import annotations

import math

from shared.settings import Settings
from shared.storage.s3 import Storage

from .ttlcache import TtlCache

CACHE_MAX_URLS = 10_000  # signed URLs remembered per gateway process


class SignedUrls:
    def __init__(self, storage: Storage, settings: Settings) -> None:
        self._storage, self._ttl = storage, settings.signed_url_ttl_sec
        reuse = min(settings.signed_url_reuse_sec, self._ttl / 2)  # a URL handed out has half its life or more left
        self._cache: TtlCache[tuple[str, str], str] = TtlCache(reuse, CACHE_MAX_URLS)

    async def get(self, key: str, filename: str) -> tuple[str, int]:
        """A signed GET URL of `key` (downloaded as `filename`) and the whole seconds it stays valid."""
        hit = self._cache.get((key, filename))
        if hit is not None:
            age, url = hit
            return url, math.floor(self._ttl - age)
        url = await self._storage.signed_get_url(key, self._ttl, filename)
        self._cache.put((key, filename), url)
        return url, self._ttl
