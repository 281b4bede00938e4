"""A rolling upgrade across migration 018 (result_keys): rows the previous release completed (subtitle keys only
in result_srt_key, result_vtt_key, result_words_key) are shown, reused and reaped by this one, and rows this
release completes keep those columns set for the previous release's readers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from services.reaper.handler import reap_once
from shared.db import fingerprints, jobs
from shared.jobs.contracts import ClipJobMessage, ClipResult, UrlSource
from shared.jobs.ids import uuid7
from shared.runtime.resources import Resources
from shared.storage.s3 import result_key

# The previous release's COMPLETE: result_keys (018) stays at its default, {}.
OLD_COMPLETE = """
UPDATE jobs SET status = 'done', progress = 1, stage = NULL, result = $2, result_video_key = $3,
       result_srt_key = $4, result_vtt_key = $5, result_words_key = $6,
       expires_at = now() + interval '1 hour', updated_at = now()
WHERE id = $1
"""
OLD_COLUMNS = "SELECT result_keys, result_srt_key, result_vtt_key, result_words_key FROM jobs WHERE id = $1"
SET_EXPIRED = "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1"
RESULT = ClipResult(actual_start_sec=1.0, actual_end_sec=3.0, duration_sec=2.0, size=3, sha256="0" * 64)


def keys_of(tag: str) -> dict[str, str]:
    return {"video": result_key(tag * 64, "clip.mp4"), "srt": result_key(tag * 64, "clip.srt"),
            "vtt": result_key(tag * 64, "clip.vtt"), "words": result_key(tag * 64, "clip.words.json")}


async def new_row(res: Resources) -> uuid.UUID:
    job = ClipJobMessage(id=str(uuid7()), source=UrlSource(url="http://127.0.0.1:9/a.mp4"), start_sec=1, end_sec=3)
    async with res.db.acquire() as conn:
        assert await jobs.insert_job(conn, job)
    return uuid.UUID(job.id)


async def old_release_completes(res: Resources, keys: dict[str, str]) -> uuid.UUID:
    uid = await new_row(res)
    await res.db.execute(OLD_COMPLETE, uid, msgspec.to_builtins(RESULT), keys["video"], keys["srt"], keys["vtt"],
                         keys["words"])
    return uid


async def store(res: Resources, keys: dict[str, str], tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"abc")
    for key in keys.values():
        await res.storage.put_file(key, body, "application/octet-stream", {})


async def test_a_row_the_previous_release_completed_is_shown_reused_and_reaped(
    client: AsyncTestClient[Any], resources: Resources, tmp_path: Path
) -> None:
    keys = keys_of("a")
    await store(resources, keys, tmp_path)
    old = await old_release_completes(resources, keys)

    view = (await client.get(f"/api/jobs/{old}")).json()
    assert view["status"] == "done"
    assert set(view["urls"]["files"]) == {"video", "srt", "vtt", "words"}
    assert view["urls"]["srt"] and view["urls"]["vtt"] and view["urls"]["words"]

    await fingerprints.record(resources.db, old, "fp-old")
    earlier = await fingerprints.earlier_result(resources.db, "fp-old")
    assert earlier is not None
    _, video_key, files = earlier
    assert {"video": video_key, **files} == keys  # a reusing job gets its subtitle files too

    # The new release completes a job reusing them: while it lives, expiring the old row deletes nothing.
    reuser = await new_row(resources)
    assert await jobs.complete(resources.db, reuser, RESULT, video_key, 3600, files) is not None
    await resources.db.execute(SET_EXPIRED, old)
    report = await reap_once(resources)
    assert (report.expired, report.results_deleted, report.errors) == (1, 0, [])
    for key in keys.values():
        assert await resources.storage.head(key) is not None

    # A live old-way row keeps a key a new-way row shares; once it is gone too, every file is deleted.
    await resources.db.execute(SET_EXPIRED, reuser)
    second_old = await old_release_completes(resources, keys)
    report = await reap_once(resources)
    assert (report.expired, report.results_deleted, report.errors) == (1, 0, [])
    await resources.db.execute(SET_EXPIRED, second_old)
    report = await reap_once(resources)
    assert (report.expired, report.results_deleted, report.errors) == (1, 4, [])
    for key in keys.values():
        assert await resources.storage.head(key) is None


async def test_a_row_this_release_completes_keeps_the_previous_release_columns(resources: Resources) -> None:
    keys = keys_of("b")
    uid = await new_row(resources)
    files = {"srt": keys["srt"], "vtt": keys["vtt"], "words": keys["words"], "poster": "results/x/poster.jpg"}
    assert await jobs.complete(resources.db, uid, RESULT, keys["video"], 3600, files) is not None
    row = await resources.db.fetchrow(OLD_COLUMNS, uid)
    assert row is not None and dict(row["result_keys"]) == files
    assert (row["result_srt_key"], row["result_vtt_key"], row["result_words_key"]) == (
        keys["srt"], keys["vtt"], keys["words"])

    no_subtitles = await new_row(resources)
    assert await jobs.complete(resources.db, no_subtitles, RESULT, keys["video"], 3600, {}) is not None
    row = await resources.db.fetchrow(OLD_COLUMNS, no_subtitles)
    assert row is not None and (row["result_srt_key"], row["result_vtt_key"], row["result_words_key"]) == (
        None, None, None)
