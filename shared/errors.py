"""clipjet's error tree: every failure a user can see has a stable `code`.

`Permanent` errors fail the job at once (bad input, unreadable media); `Transient` ones are retried
with backoff until `MAX_ATTEMPTS`. The same codes appear in REST error bodies and on failed jobs.
"""

from __future__ import annotations


class ClipError(Exception):
    """Base of every error clipjet reports; `code` is stable, the message says what to do."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class Permanent(ClipError):
    """Retrying cannot help: the job fails now."""

    http_status = 422


class Transient(ClipError):
    """May succeed later (network, storage, a killed process): retried with backoff."""

    code = "transient_error"
    http_status = 503


class RetryLater(ClipError):
    """Not now: the client should try again after `retry_after_sec` (the Retry-After header). When the job was
    already written, `job_id` names it: it will run without being sent again."""

    def __init__(self, message: str, *, retry_after_sec: int, job_id: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_sec = retry_after_sec
        self.job_id = job_id


class QueueFull(RetryLater):
    """The queues are over their limit: the job is written but waits (deferred) until they drain."""

    code = "queue_full"
    http_status = 429


class ServiceUnavailable(RetryLater):
    """A dependency (PostgreSQL, NATS, object storage) is failing, or its circuit breaker is open."""

    code = "service_unavailable"
    http_status = 503


class ScratchFull(RetryLater):
    """Every worker node is out of scratch space (NVME_SCRATCH_GB): new jobs are refused for a moment."""

    code = "scratch_full"
    http_status = 503


class BadRequest(Permanent):
    """A request the gateway refuses before a job exists."""


class MalformedJson(BadRequest):
    code = "malformed_json"
    http_status = 400


class NotFound(Permanent):
    http_status = 404


class Conflict(Permanent):
    """The request clashes with what is stored (e.g. an upload that is already complete)."""

    code = "conflict"
    http_status = 409


class SourceUnreadable(Permanent):
    """The source exists but is not media we can read, or answered 4xx."""

    code = "source_unreadable"


class EndPastDuration(Permanent):
    code = "end_past_duration"


class FetchRefused(Permanent):
    """The URL is not one clipjet may fetch (scheme, private address, too many redirects, too large)."""

    code = "fetch_refused"


class SourceUnreachable(Transient):
    """Network trouble reaching the source: retried."""

    code = "source_unreachable"


class StorageError(Transient):
    code = "storage_error"


class LanguageUnsupported(Permanent):
    """The job asks for a language the configured speech model cannot transcribe (e.g. an English-only model)."""

    code = "language_unsupported"


class LanguageUnknown(Permanent):
    """`subs.lang` is neither `auto` nor a Whisper language code."""

    code = "language_unknown"


class ModelCannotTranslate(Permanent):
    """`subs.translate` on a transcriber whose speech model is English-only (tiny.en, *.en): no translate task."""

    code = "model_cannot_translate"


class ModelUnavailable(Permanent):
    """The configured speech model is missing, incomplete or corrupt."""

    code = "asr_model_unavailable"


class AsrOutOfMemory(Transient):
    """Local speech recognition ran out of memory even after the batch halving and the CPU fallback."""

    code = "asr_out_of_memory"


class HostedAsrUnavailable(Transient):
    """The hosted speech API (ASR_HOSTED_URL) did not answer, or answered 5xx/429: retried."""

    code = "asr_hosted_unavailable"


class HostedAsrRefused(Transient):
    """The hosted speech API refused the request (4xx: a wrong key or model, a file it will not take)."""

    code = "asr_hosted_refused"
