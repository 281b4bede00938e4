"""Result files ("artifact roles") beside the clip, each declared once, by the stage that makes it.

A stage declares its files as `Output`s (role, download name with its extension, content type), stores each in
the job's staging prefix with `store`, and forwards the artifacts. Everything after is generic: the uploader
promotes every artifact that names a file to a content-hashed result key, the job's row keeps them by role
(`jobs.result_keys`), the job's view signs each (`ResultUrls.files`) and the reaper deletes them on expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from shared.jobs.contracts import Artifact, StageMessage
from shared.storage.s3 import ObjectInfo, Storage, sha256_file, staging_prefix

VIDEO_ROLE = "video"  # the clip itself (stored by the cutting stages, promoted as clip.mp4)


@dataclass(frozen=True)
class Output:
    """One result file: its role (its name in the job's URLs), its file name and its Content-Type."""

    role: str
    filename: str
    content_type: str

    def staging_key(self, job_id: str) -> str:
        return f"{staging_prefix(job_id)}out/{self.filename}"

    def artifact(self, stage: str, info: ObjectInfo) -> Artifact:
        return Artifact(stage=stage, role=self.role, key=info.key, size=info.size, sha256=info.sha256,
                        filename=self.filename, content_type=self.content_type)

    async def store(self, storage: Storage, job_id: str, path: Path, metadata: dict[str, str] | None = None
                    ) -> ObjectInfo:
        """`path` stored at this file's staging key, with its sha256 (and `metadata`) as object metadata."""
        meta = {"sha256": await sha256_file(path), **(metadata or {})}
        size = await storage.put_file(self.staging_key(job_id), path, self.content_type, meta)
        return ObjectInfo(self.staging_key(job_id), size, meta)


async def stored_earlier(storage: Storage, job_id: str, outputs: tuple[Output, ...]) -> dict[str, ObjectInfo] | None:
    """Each of `outputs` by role as an earlier delivery stored it, or None unless every one is there."""
    found = {output.role: await storage.head(output.staging_key(job_id)) for output in outputs}
    if not all(info is not None and info.sha256 for info in found.values()):
        return None
    return found  # type: ignore[return-value]


def forward_outputs(task: StageMessage, stage: str, stored: dict[str, ObjectInfo], outputs: tuple[Output, ...]
                    ) -> StageMessage:
    """`task` passed on by `stage` with its stored result files as artifacts."""
    following = task.forward()
    made = [output.artifact(stage, stored[output.role]) for output in outputs if output.role in stored]
    return msgspec.structs.replace(following, artifacts=[*following.artifacts, *made])


def result_artifacts(task: StageMessage) -> list[Artifact]:
    """The latest artifact of each role that names a result file, in the order they were made."""
    latest: dict[str, Artifact] = {}
    for artifact in task.artifacts:
        if artifact.filename:
            latest.pop(artifact.role, None)
            latest[artifact.role] = artifact
    return list(latest.values())
