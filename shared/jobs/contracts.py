"""The public message contract (NATS subjects) and the REST bodies, as msgspec Structs.

Wire names are camelCase. Bus messages accept unknown fields so the contract can grow; every
addition is an optional field with a default. `schemas/` is generated from these structs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Priority = Literal["fast", "normal", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("fast", "normal", "bulk")  # drained in this order
JobStatus = Literal["queued", "processing", "done", "failed", "expired", "canceled"]
Precision = Annotated[
    Literal["auto", "keyframe", "frame"],
    msgspec.Meta(description=(
        "keyframe: fastest, the start snaps to the keyframe at or before startSec (the job reports the real "
        "start). frame: the first frame is the frame at startSec and the clip ends at endSec. auto (default): "
        "as frame, by plain stream copy when startSec already is a keyframe."
    )),
]
CutPath = Literal["copy", "smart", "reencode"]  # how a clip was made: stream copy, smart cut, full re-encode
AsrEngineName = Literal["faster-whisper", "whisper.cpp", "hosted"]  # which speech engine made the subtitles
Seconds = Annotated[float, msgspec.Meta(ge=0, description="A time in the source media, in seconds (0 or more).")]
EndSeconds = Annotated[
    float, msgspec.Meta(gt=0, description="The clip's end in the source, in seconds: after startSec, and at most "
                                          "MAX_CLIP_SECONDS (default 120) after it."),
]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Metadata = Annotated[
    dict[str, Any],
    msgspec.Meta(description=(
        "The client's own reference (any JSON object, at most MAX_METADATA_BYTES, default 4096, encoded): stored "
        "with the job and returned as given in the job's view and its end event; clipjet never reads it."
    )),
]
JobId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$",
        description="A UUID; UUIDv7 preferred (its timestamp is the job's creation time).",
    ),
]


WebhookUrl = Annotated[
    str,
    msgspec.Meta(min_length=1, description=(
        "An http(s) URL clipjet POSTs the job's view to when it ends (done, failed or canceled), signed with the "
        "API key's webhook secret (header Clipjet-Signature) and retried with backoff for hours. Public addresses "
        "only. Without it, the key's default webhook (if any) is used."
    )),
]
WebhookStatus = Literal["pending", "delivered", "failing", "gave_up"]


KeyId = Annotated[
    str,
    msgspec.Meta(pattern=r"^[0-9a-f]{12}$", description=(
        "The public id of the API key that submitted the job (set by the gateway; a system publishing straight to "
        "NATS leaves it out). An identical earlier request is reused only when the same key made it."
    )),
]


BatchId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$",
        description=(
            "The batch (`POST /api/jobs` with `clips`) the gateway made this job in: the fetcher stages the source "
            "once for every job of the batch. A job published straight to NATS leaves it out (or names a batch "
            "that is not its own: then it is fetched on its own)."
        ),
    ),
]


class WireStruct(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base of every clipjet message: camelCase on the wire, unknown fields ignored."""


TranslateTo = Annotated[
    Literal["en"],
    msgspec.Meta(description=(
        "Translate the speech: the subtitles are in this language, whatever is spoken (Whisper's translate task; "
        "it translates into English only, so \"en\" is the one value). Left out: the subtitles are in the "
        "language spoken. Needs a multilingual ASR_MODEL (an English-only one fails the job: "
        "model_cannot_translate)."
    )),
]


class Subtitles(WireStruct):
    """Subtitle options: transcribe the clip's speech (`lang`: the language spoken, or auto), optionally
    translated into English (`translate`), optionally burned into the picture."""

    enabled: bool = False
    burn_in: bool = False
    lang: str = "auto"
    translate: TranslateTo | None = None


Aspect = Literal["9:16", "1:1", "4:5"]
ReframeMode = Literal["crop", "pad"]


class Reframe(WireStruct):
    """Reframe the clip for shorts (re-encoded, in the same pass as any burn-in; subtitles placed for the new
    frame). `crop`: the largest window of `aspect` in the picture, at full resolution (1920x1080 to 9:16:
    608x1080), centred on `focusX` (0: left edge, 1: right edge; kept inside the picture; a picture taller than
    `aspect` is cropped top and bottom equally). `pad`: the whole picture scaled to fit a frame whose shorter
    side is the picture's shorter side (1920x1080 to 9:16: 1080x1920), with black bars."""

    aspect: Aspect
    mode: ReframeMode = "crop"
    focus_x: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5


ClipSeconds = Annotated[float, msgspec.Meta(ge=0, description=(
    "A time in the clip, in seconds from its first frame (0 or more, before the clip's end)."))]


class Poster(WireStruct):
    """A poster JPEG of the clip (the `thumbs` stage; `urls.files.poster`): the frame at `atSec`, or without it the
    sharpest frame of the clip's first 3 seconds."""

    at_sec: ClipSeconds | None = None


class Thumbnails(WireStruct):
    """Thumbnails for scrubbing (the `thumbs` stage): one frame every `intervalSec` of the clip, `width` pixels
    wide, tiled in one JPEG sprite sheet (`urls.files.sprite`, at most 10 a row), and a WebVTT index
    (`urls.files.thumbnails`) whose cue for each interval names its tile: `<sheet's file name>#xywh=x,y,w,h`."""

    interval_sec: Annotated[float, msgspec.Meta(ge=1, le=60, description="Seconds between thumbnails.")] = 2.0
    width: Annotated[int, msgspec.Meta(ge=32, le=480, multiple_of=2, description=(
        "Each thumbnail's width in pixels (even): never wider than the clip's picture, and narrower when the "
        "thumbnail would be over 480 px tall. A sheet over 16383 px a side or 16 Mpx is refused: "
        "sprite_too_large."))] = 160


class UploadSource(WireStruct, tag="upload", tag_field="type"):
    """A file the client put into object storage through an upload slot (`POST /api/uploads`): `key` is the
    slot's key, under `uploads/` (no other object may be named)."""

    key: str


class UrlSource(WireStruct, tag="url", tag_field="type"):
    """An HTTP(S) media file."""

    url: str


class YoutubeSource(WireStruct, tag="youtube", tag_field="type"):
    """A page yt-dlp understands, limited to the allowed domains."""

    url: str


Source = UploadSource | UrlSource | YoutubeSource
SOURCE_TYPES = ("upload", "url", "youtube")


class ClipSpec(WireStruct, kw_only=True):
    """What to cut: the source, the range in seconds, subtitles, and the queue priority."""

    source: Source
    start_sec: Seconds
    end_sec: EndSeconds  # and endSec - startSec <= MAX_CLIP_SECONDS: shared/jobs/jobrules.py, on every way in
    subs: Subtitles = msgspec.field(default_factory=Subtitles)
    priority: Priority = "normal"
    precision: Precision = "auto"
    reframe: Reframe | None = None  # None: the source's frame
    metadata: Metadata | None = None  # at most MAX_METADATA_BYTES encoded: shared/jobs/jobrules.py, on every way in
    webhook: WebhookUrl | None = None  # checked at submit (services/gateway/webhook.py) and at each delivery
    poster: Poster | None = None  # atSec within the clip: shared/jobs/jobrules.py
    thumbnails: Thumbnails | None = None


class ClipJobMessage(ClipSpec, kw_only=True):
    """A clip request as it travels on the bus; other systems may publish it straight to `<prefix>.fetch.<priority>`.

    `id` is a UUID (UUIDv7 preferred: its timestamp places the job's row in its day partition).
    """

    id: JobId
    owner: KeyId | None = None  # the API key that submitted it (the gateway sets it); scopes de-duplication
    batch_id: BatchId | None = None  # the batch the gateway made it in: its source is staged once for the batch


class StreamFacts(WireStruct):
    """One media stream as the probe (libavformat) reported it."""

    index: Count
    kind: Literal["video", "audio", "subtitle", "data"]
    codec: str
    width: int | None = None
    height: int | None = None


class MediaPlan(WireStruct):
    """What the fetcher learned and decided: probe facts, the cut path, and where the staged media starts."""

    duration_sec: float
    container: str
    streams: list[StreamFacts]
    cut_start_sec: float  # the keyframe at or before startSec: where a stream-copy clip starts
    cut_path: CutPath = "copy"
    cut_reason: str = ""  # why this path was chosen (e.g. "start_on_keyframe", "several_video_streams")
    staged_offset_sec: float = 0.0  # source time of the staged media's t=0


class Artifact(WireStruct):
    """An object a stage produced in storage. One with a `filename` is a result file (`shared.jobs.outputs`): the
    uploader promotes it to `results/sha256/<2>/<sha256>/<filename>` and the job's view signs it under its role."""

    stage: str
    role: str  # "source" (staged input), "video" (the clip), or a result file's role ("srt", "vtt", "words", …)
    key: str
    size: Count
    sha256: str = ""
    filename: str = ""  # a result file's download name (and its extension); empty: not a result file
    content_type: str = ""  # a result file's Content-Type


class SubtitlesMade(WireStruct):
    """Who made the clip's subtitles: the engine (local faster-whisper or whisper.cpp, or the hosted API used
    for bursts and when local inference ran out of memory), its model, and the language of the subtitles' text.
    A translated job (subs.translate) also names the language spoken in the clip (detected, or as subs.lang
    named it): `sourceLanguage`."""

    engine: AsrEngineName
    model: str
    language: str  # of the subtitles' text: the language spoken, or the translation's ("en")
    source_language: str | None = None  # set when translated: the language spoken ("" if the engine could not tell)


class ClipResult(WireStruct):
    """What the finished clip actually covers, in source seconds, and its bytes."""

    actual_start_sec: float
    actual_end_sec: float
    duration_sec: float
    size: Count
    sha256: str
    cut_path: CutPath = "copy"  # which path made the clip
    subtitles: SubtitlesMade | None = None  # set when the job asked for subtitles


class StageMessage(WireStruct):
    """The routing slip carried between stages: the job, the plan so far, artifacts, and the remaining route."""

    job: ClipJobMessage
    route: list[str]  # stages still to run; the first is the stage this message is addressed to
    done: list[str] = msgspec.field(default_factory=list)  # stages already run, in order
    plan: MediaPlan | None = None
    artifacts: list[Artifact] = msgspec.field(default_factory=list)
    result: ClipResult | None = None
    subtitles: SubtitlesMade | None = None  # the transcriber's, carried to the uploader (who puts it on the result)

    def forward(self, *, artifact: Artifact | None = None, result: ClipResult | None = None) -> StageMessage:
        """This message passed on by its current stage: the stage moves to `done`, its output is appended."""
        return msgspec.structs.replace(
            self,
            route=self.route[1:],
            done=[*self.done, self.route[0]],
            artifacts=[*self.artifacts, artifact] if artifact else self.artifacts,
            result=result or self.result,
        )

    def artifact(self, role: str) -> Artifact | None:
        """The latest artifact with this role."""
        for item in reversed(self.artifacts):
            if item.role == role:
                return item
        return None


class ProgressEvent(WireStruct):
    """Published on core NATS `<prefix>.progress.<jobId>` at most every HEARTBEAT_MS while a stage works."""

    job_id: str
    pct: Fraction  # 0..1 over the whole job
    stage: str


class JobEvent(WireStruct):
    """Published when a job ends (done, failed or canceled) on `<prefix>.events.<jobId>`, kept in the JetStream stream
    `<stream>_EVENTS` for EVENTS_MAX_AGE_SEC (a durable consumer reads it later) and seen by core subscribers.
    Its Nats-Msg-Id is `<jobId>:end`."""

    job_id: str
    status: JobStatus
    error_code: str | None = None
    result: ClipResult | None = None
    metadata: Metadata | None = None  # the job request's `metadata`, as given


# ---------------------------------------------------------------- REST bodies


Timecode = Annotated[str, msgspec.Meta(description=(  # its length is the parser's to refuse: invalid_time
    "A time as a string: seconds (\"62.5\") or [HH:]MM:SS[.ms] (\"1:02.5\", \"01:02:03.250\"); the gateway "
    "converts it to seconds (an invalid one: 422 invalid_time)."
))]


class JobRequest(ClipSpec, kw_only=True):
    """`POST /api/jobs` body: the fields of ClipJobMessage without the id. `startSec` and `endSec` may also be
    timecode strings (`"1:02.5"`); the job's message carries them in seconds."""

    start_sec: Seconds | Timecode
    end_sec: EndSeconds | Timecode


class BatchClip(WireStruct):
    """One clip of a batch: its range, and optionally its own precision, subtitles, reframe and metadata (else
    the batch's)."""

    start_sec: Seconds | Timecode
    end_sec: EndSeconds | Timecode
    precision: Precision | None = None
    subs: Subtitles | None = None
    reframe: Reframe | None = None
    metadata: Metadata | None = None


class BatchRequest(WireStruct):
    """`POST /api/jobs` body with `clips` instead of startSec/endSec: one job per clip, one batch, the source
    fetched and staged once for them all. Top-level subs, precision, reframe and metadata apply to clips without
    their own."""

    source: Source
    clips: Annotated[list[BatchClip], msgspec.Meta(min_length=1, description=(
        "The clips, at most MAX_BATCH_CLIPS (default 50); each becomes a job of its own."))]
    subs: Subtitles = msgspec.field(default_factory=Subtitles)
    priority: Priority = "normal"
    precision: Precision = "auto"
    reframe: Reframe | None = None
    metadata: Metadata | None = None
    webhook: WebhookUrl | None = None  # every job of the batch POSTs its end there (else the key's default)
    poster: Poster | None = None  # for every clip of the batch
    thumbnails: Thumbnails | None = None


class JobSubmission(WireStruct):
    """`POST /api/jobs` body: one clip (`startSec`, `endSec`: a JobRequest) or a batch (`clips`: a
    BatchRequest); never both."""

    source: Source
    start_sec: Seconds | Timecode | None = None
    end_sec: EndSeconds | Timecode | None = None
    clips: list[BatchClip] | None = None
    subs: Subtitles = msgspec.field(default_factory=Subtitles)
    priority: Priority = "normal"
    precision: Precision = "auto"
    reframe: Reframe | None = None
    metadata: Metadata | None = None
    webhook: WebhookUrl | None = None
    poster: Poster | None = None
    thumbnails: Thumbnails | None = None


class JobAccepted(WireStruct):
    """`POST /api/jobs` answer: the new job's id and status."""

    id: str
    status: JobStatus


class BatchAccepted(WireStruct):
    """`POST /api/jobs` answer to a batch: its id and one job per clip, in the order of `clips`."""

    batch_id: str
    jobs: list[JobAccepted]


class ResultUrls(WireStruct):
    """Signed, short-lived URLs of a finished job's files: `files` has every one by its role (`video`, and those
    the request's options made: `srt`, `vtt`, `words`, …); `video`, `srt`, `vtt` and `words` are also fields of
    their own, as before `files` existed."""

    video: str
    expires_in_sec: int
    srt: str | None = None
    vtt: str | None = None
    words: str | None = None
    files: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def of(cls, files: dict[str, str], expires_in_sec: int) -> ResultUrls:
        """The URLs from every file's by role (the `video` role is required)."""
        return cls(video=files["video"], expires_in_sec=expires_in_sec, srt=files.get("srt"), vtt=files.get("vtt"),
                   words=files.get("words"), files=files)


class WebhookState(WireStruct, omit_defaults=False):
    """The job's webhook delivery: its URL, where it stands, and what the last try got."""

    url: str
    status: WebhookStatus  # pending: not tried yet, or the job has not ended; failing: will be tried again
    attempts: int
    last_status_code: int | None = None  # the receiver's HTTP status on the last try (None: no answer)
    last_error: str | None = None
    last_attempt_at: str | None = None


class JobView(WireStruct, omit_defaults=False):
    """`GET /api/jobs/{id}`: the job's state as a client sees it."""

    id: str
    status: JobStatus
    priority: Priority
    stage: str | None
    progress: float
    attempts: int
    created_at: str
    updated_at: str
    request: JobRequest | None  # None: a message published straight to NATS, refused as not fitting the contract
    error_code: str | None = None
    error_message: str | None = None
    result: ClipResult | None = None
    urls: ResultUrls | None = None
    metadata: Metadata | None = None  # the request's `metadata`, as given
    webhook: WebhookState | None = None  # the job names a webhook (or its key has a default)
    batch_id: str | None = None  # the batch it was submitted in


class JobProgress(WireStruct, omit_defaults=False):
    """`GET /api/jobs/{id}/events`: the data of a `progress` event (the `end` event's data is the JobView)."""

    job_id: str
    status: JobStatus  # queued or processing
    stage: str | None  # None while queued before any stage took the job
    pct: Fraction  # 0..1 over the whole job


class BatchView(WireStruct, omit_defaults=False):
    """`GET /api/batches/{id}`: the batch's jobs (in the order of its `clips`) and how many are in each state."""

    id: str
    created_at: str
    jobs: list[JobView]
    counts: dict[str, int]


class JobList(WireStruct, omit_defaults=False):
    """`GET /api/jobs`: the caller's jobs, newest first; pass `nextCursor` as `cursor` for the next page."""

    jobs: list[JobView]
    next_cursor: str | None = None


class UsageCounter(WireStruct, omit_defaults=False):
    """One quota: what the key used and its limit."""

    used: float
    limit: float


class Usage(WireStruct, omit_defaults=False):
    """`GET /api/usage`: the calling key's quotas (jobs in flight, jobs and clip seconds this UTC day) and its
    rate limit. Without auth (AUTH=off) there are no quotas."""

    key_id: str | None
    priorities: list[str]
    rate_limit_per_min: int
    jobs_in_flight: UsageCounter | None = None
    jobs_today: UsageCounter | None = None
    source_seconds_today: UsageCounter | None = None
    upload_bytes_today: UsageCounter | None = None


class UploadSlotRequest(WireStruct):
    """`POST /api/uploads` body: the file's size (required: the slot's signature binds it, and it counts against
    the key's upload bytes per day), name and type. A size over the single-PUT limit gets a multipart slot (one
    signed URL per part, resumable)."""

    size_bytes: Annotated[int, msgspec.Meta(ge=0)]
    filename: str = "source"
    content_type: str = "application/octet-stream"


class UploadPart(WireStruct):
    """One part of a multipart upload: PUT bytes [(partNumber-1)·partSize, partNumber·partSize) to `url`."""

    part_number: int
    url: str = ""
    etag: str | None = None  # in status answers: the part is stored
    size: int | None = None


class UploadSlot(WireStruct):
    """Where to put a file, straight into object storage; name `key` in the job's source when it is there.

    Single: PUT the whole file to `url` with `headers`. Multipart (`uploadId` set): PUT each part to its URL,
    then `POST /api/uploads/complete`; `GET /api/uploads/status` lists the parts already stored.
    """

    key: str
    method: str
    headers: dict[str, str]
    expires_in_sec: int
    url: str | None = None
    upload_id: str | None = None
    part_size: int | None = None
    parts: list[UploadPart] = msgspec.field(default_factory=list)


class UploadRef(WireStruct):
    """A multipart upload under way."""

    key: str
    upload_id: str


class UploadStatus(WireStruct):
    """The parts of a multipart upload that object storage already holds (a client resumes with the rest)."""

    key: str
    upload_id: str
    parts: list[UploadPart]


class UploadDone(WireStruct):
    """A completed upload: name `key` in a job's upload source."""

    key: str
    size: int


class ErrorDetail(WireStruct):
    """A stable machine-readable code and a message that says what to do."""

    code: str
    message: str
    field: str | None = None
    retry_after_sec: int | None = None  # with 429/503: when to try again (also the Retry-After header)
    job_id: str | None = None  # with 429 queue_full: the job was written and will run once the queue drains


class ErrorBody(WireStruct):
    """Every 4xx/5xx answer of the REST API."""

    error: ErrorDetail


BUS_MESSAGES: tuple[type[WireStruct], ...] = (ClipJobMessage, StageMessage, ProgressEvent, JobEvent)
REST_BODIES: tuple[type[WireStruct], ...] = (
    JobRequest, JobAccepted, JobView, JobList, BatchRequest, BatchAccepted, BatchView, Usage, UploadSlotRequest,
    UploadSlot, UploadRef, UploadStatus, UploadDone, ErrorBody,
)
