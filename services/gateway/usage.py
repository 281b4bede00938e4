"""`/api/usage`: the calling key's quotas and what it used of them."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from shared.db import keys
from shared.jobs.contracts import Usage, UsageCounter

from .auth import Caller, authenticate
from .openapi import SECURITY, error_responses
from .state import Gateway


class UsageController(Controller):
    path = "/api/usage"
    tags = ["keys"]
    before_request = authenticate
    security = SECURITY

    @get("/", operation_id="getUsage", responses=error_responses(401, 429, 503))
    async def usage(self, gw: NamedDependency[Gateway], caller: NamedDependency[Caller]) -> Usage:
        """The calling key's use of its quotas today (UTC) and its limits."""
        settings = gw.res.settings
        view = Usage(key_id=caller.owner, priorities=list(caller.priorities),
                     rate_limit_per_min=settings.rate_limit_per_min)
        if caller.owner is None or caller.quotas is None:
            return view
        async with gw.breakers.db:
            used = await keys.usage(gw.res.db, caller.owner)
        quotas = caller.quotas
        view.jobs_in_flight = UsageCounter(used=used["in_flight"], limit=quotas.max_in_flight)
        view.jobs_today = UsageCounter(used=used["jobs_today"], limit=quotas.max_jobs_per_day)
        view.source_seconds_today = UsageCounter(used=round(used["source_seconds_today"], 3),
                                                 limit=quotas.max_source_seconds_per_day)
        async with gw.breakers.db:
            uploaded = await keys.uploaded_today(gw.res.db, caller.owner)
        view.upload_bytes_today = UsageCounter(used=uploaded, limit=quotas.max_upload_bytes_per_day)
        return view
