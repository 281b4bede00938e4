"""Reaper step `batch_staging`: a batch's staged source spans are deleted once every job of the batch has ended.

A batch's spans (services/fetcher/batch.py) are read by all of its jobs, so they are not under any one job's
`staging/<jobId>/` prefix (the `staging` step); each span's own prefix is deleted here, once per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from shared.db import batches
from shared.db.batches import StagedSource
from shared.runtime.resources import Resources

if TYPE_CHECKING:
    from .handler import ReapReport


async def clean_batch_staging(res: Resources, report: ReapReport) -> None:
    for row in await batches.staging_due(res.db, res.settings.reaper_batch):
        for span in msgspec.convert(row["staged"], StagedSource).spans:
            prefix = span.key.rsplit("/", 1)[0] + "/"  # staging/<span id>/: the span and nothing else
            report.staging_objects_deleted += await res.storage.delete_prefix(prefix)
        await batches.mark_staging_cleaned(res.db, row["id"])
        report.batch_staging_cleaned += 1
