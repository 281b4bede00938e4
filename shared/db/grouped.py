"""The gateway's grouped statement: many requests' rate-limit hits, `published_at` marks and job reads in one
round trip (services/gateway/writes.py gathers them; keys.rate_hits is the same statement with hits only).

Hits are counted as if one after the other: each gets its window's count including itself and the hits before it
in the batch, and the previous window's count. Marks set `published_at` of just-published jobs. Reads return job
rows (`SELECT *`, as jobs.get_job) from the snapshot the statement starts with.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from shared.db import jobs

# One result set for two kinds of row: the hits' counts (job columns NULL, from `(NULL::jobs).*`) and the jobs read
# (rate_* columns NULL). The UPDATE is a data-modifying CTE nobody reads, which PostgreSQL runs once, to completion,
# all the same. A kind with nothing to do costs nothing: empty arrays, NULL created_at ranges.
STATEMENT = """
WITH marked AS (
    UPDATE jobs SET published_at = now() WHERE id = ANY($4::uuid[]) AND created_at >= $5 AND created_at < $6
), wanted AS (
    SELECT subject, window_start, count(*)::integer AS n
    FROM unnest($1::text[], $2::bigint[]) AS w (subject, window_start)
    GROUP BY subject, window_start
), hit AS (
    INSERT INTO rate_windows (subject, window_start, hits)
    SELECT subject, window_start, n FROM wanted ORDER BY subject, window_start
    ON CONFLICT (subject, window_start) DO UPDATE SET hits = rate_windows.hits + excluded.hits
    RETURNING subject, window_start, hits
)
SELECT (NULL::jobs).*, hit.subject AS rate_subject, hit.window_start AS rate_window_start,
       hit.hits AS rate_current, coalesce(before.hits, 0) AS rate_previous
FROM hit LEFT JOIN rate_windows before
    ON before.subject = hit.subject AND before.window_start = hit.window_start - $3
UNION ALL
SELECT j.*, NULL, NULL, NULL, NULL FROM jobs j WHERE j.id = ANY($7::uuid[]) AND j.created_at >= $8 AND j.created_at < $9
"""
Hit = tuple[str, int]  # (subject, window start)
Counts = tuple[int, int]  # (this window's count including the hit, the previous window's count)


def _span(job_ids: Sequence[uuid.UUID]) -> tuple[datetime | None, datetime | None]:
    """The created_at range that holds these jobs' rows (None, None: no job)."""
    windows = [jobs.window(job_id) for job_id in job_ids]
    return min((w[0] for w in windows), default=None), max((w[1] for w in windows), default=None)


async def write(pool: asyncpg.Pool, hits: Sequence[Hit], window_sec: int, published: Sequence[uuid.UUID] = (),
                reads: Sequence[uuid.UUID] = ()) -> tuple[list[Counts], dict[uuid.UUID, asyncpg.Record]]:
    """Count `hits`, mark `published`, read `reads`, in one statement: each hit's counts, in order, and the rows
    found by id."""
    wanted = list(dict.fromkeys(reads))
    rows = await pool.fetch(STATEMENT, [subject for subject, _ in hits], [start for _, start in hits], window_sec,
                            list(published), *_span(published), wanted, *_span(wanted))
    after, found = {}, {}
    for row in rows:
        if row["rate_subject"] is None:
            found[row["id"]] = row
        else:
            after[(row["rate_subject"], row["rate_window_start"])] = (int(row["rate_current"]),
                                                                     int(row["rate_previous"]))
    still_to_count = Counter(hits)  # the hits of each window not yet given their count, first to last
    counts = []
    for one in hits:
        current, previous = after[one]
        counts.append((current - still_to_count[one] + 1, previous))
        still_to_count[one] -= 1
    return counts, found
