"""The clip a cutting stage (trimmer, encoder) made: stored once in the job's staging prefix, then forwarded.

Both stages store the same way and forward the same `video` artifact and `ClipResult`, so a redelivered
message whose clip is already stored short-circuits to the same message.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.contracts import Artifact, ClipResult, CutPath, StageMessage
from shared.media.mp4 import mp4_duration
from shared.storage import ObjectInfo, Storage, sha256_file

READ_URL_TTL_SEC = 3600  # lifetime of the signed URL ffmpeg reads the staged media through, s
DURATION_META = "duration"  # object metadata: the clip's duration in seconds


async def stored_clip(storage: Storage, key: str) -> tuple[ObjectInfo, float] | None:
    """The clip already stored at `key` by an earlier delivery, with its duration; None when there is none."""
    existing = await storage.head(key)
    if existing is None or not existing.sha256 or DURATION_META not in existing.metadata:
        return None
    return existing, float(existing.metadata[DURATION_META])


async def store_clip(storage: Storage, key: str, path: Path) -> tuple[ObjectInfo, float]:
    """Put the MP4 at `path` under `key` with its sha256 and duration as metadata."""
    duration = await asyncio.to_thread(mp4_duration, path)
    metadata = {"sha256": await sha256_file(path), DURATION_META: f"{duration:.6f}"}
    size = await storage.put_file(key, path, "video/mp4", metadata)
    return ObjectInfo(key, size, metadata), duration


def forward_clip(
    task: StageMessage, stage: str, clip: ObjectInfo, duration: float, start: float, cut_path: CutPath = "copy"
) -> StageMessage:
    """`task` passed on with the clip as its `video` artifact and what it covers, in source seconds."""
    result = ClipResult(
        actual_start_sec=round(start, 6), actual_end_sec=round(start + duration, 6),
        duration_sec=round(duration, 6), size=clip.size, sha256=clip.sha256, cut_path=cut_path,
    )
    artifact = Artifact(stage=stage, role="video", key=clip.key, size=clip.size, sha256=clip.sha256)
    return task.forward(artifact=artifact, result=result)
