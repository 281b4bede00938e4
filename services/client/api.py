"""The gateway's REST API as the client uses it (httpx, synchronous): every error answer becomes an ApiError
with the body's stable code, its message and, for 429/503, Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import msgspec

from shared.jobs.contracts import JobList, JobView, UploadDone, UploadSlot, UploadStatus

ENDED = frozenset({"done", "failed", "canceled", "expired"})  # a job in one of these will not change again
EVENT_STREAM = "text/event-stream"
_decoder = msgspec.json.Decoder()
T = TypeVar("T")
NOT_UNDERSTOOD = "the gateway sent an answer this client does not understand"


class ApiError(Exception):
    """What the command reports as its error: an answer of the gateway (`status`, its body's code and message), or
    a failure on the way (`status` 0: `unreachable`, `upload_failed`, `download_failed`, `invalid_source`, …)."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: str | None = None,
                 job_id: str | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.job_id, self.body = retry_after, job_id, body

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status else ""
        wait = f"; retry after {self.retry_after} s" if self.retry_after else ""
        return f"{self.code}{where}: {self.message}{wait}"

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """The error a non-2xx answer carries (`{"error": {"code", "message", …}}`, or its status alone)."""
        try:
            body = _decoder.decode(response.read())
            detail = body["error"]
            code, message = str(detail["code"]), str(detail["message"])
        except (msgspec.DecodeError, KeyError, TypeError):
            body, detail = None, {}
            code, message = f"http_{response.status_code}", response.reason_phrase or "no error body"
        return cls(response.status_code, code, message, retry_after=response.headers.get("Retry-After"),
                   job_id=detail.get("jobId") if isinstance(detail, dict) else None, body=body)


class Api:
    """One gateway, one key. Object storage (signed URLs) is reached by `storage`, which never sends the key."""

    def __init__(self, base_url: str, key: str, timeout_sec: float) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_sec)
        self.storage = httpx.Client(timeout=timeout_sec)

    def close(self) -> None:
        self.http.close()
        self.storage.close()

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; an error answer (or none) raises ApiError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"no answer from {self.base_url}: {exc or type(exc).__name__} "
                           "(is the gateway running? CLIPJET_API_URL names it)") from exc
        if response.status_code >= 400:
            raise ApiError.of(response)
        return response

    def create_upload_slot(self, size: int, filename: str, content_type: str) -> UploadSlot:
        body = {"sizeBytes": size, "filename": filename, "contentType": content_type}
        return decode(self.call("POST", "/api/uploads", json=body).content, UploadSlot)

    def upload_status(self, key: str, upload_id: str) -> UploadStatus:
        answer = self.call("GET", "/api/uploads/status", params={"key": key, "uploadId": upload_id})
        return decode(answer.content, UploadStatus)

    def complete_upload(self, key: str, upload_id: str) -> UploadDone:
        answer = self.call("POST", "/api/uploads/complete", json={"key": key, "uploadId": upload_id})
        return decode(answer.content, UploadDone)

    def create_job(self, body: dict[str, Any]) -> str:
        """The new job's id. A 429 `queue_full` names a job that was written and will run: its id too."""
        try:
            answer = decode(self.call("POST", "/api/jobs", json=body).content, dict)
            if not isinstance(answer.get("id"), str) or not answer["id"]:
                raise ApiError(0, "unexpected_answer", f"{NOT_UNDERSTOOD} (a new job without an id)")
            return answer["id"]
        except ApiError as exc:
            if exc.code == "queue_full" and exc.job_id:
                return exc.job_id
            raise

    def get_job(self, job_id: str) -> tuple[dict[str, Any], JobView]:
        """The job's view as sent (for --json) and decoded."""
        return view_of(self.call("GET", f"/api/jobs/{job_id}").content)

    def list_jobs(self, limit: int, status: str | None) -> tuple[dict[str, Any], JobList]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        content = self.call("GET", "/api/jobs", params=params).content
        return decode(content, dict), decode(content, JobList)

    @contextmanager
    def events(self, job_id: str, last_event_id: str | None) -> Iterator[httpx.Response]:
        """The job's event stream, open (the caller reads it); any status: the caller decides what it means."""
        headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        with self.http.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as response:
            yield response


def view_of(content: bytes | str) -> tuple[dict[str, Any], JobView]:
    """A job view's JSON as sent and decoded; one that does not match the contract raises ApiError."""
    return decode(content, dict), decode(content, JobView)


def decode(content: bytes | str, type_: type[T]) -> T:
    """`content` decoded as `type_`; an answer that is not JSON or does not match the contract raises ApiError
    (`unexpected_answer`, status 0)."""
    try:
        return msgspec.json.decode(content, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError too
        raise ApiError(0, "unexpected_answer", f"{NOT_UNDERSTOOD} ({exc})") from exc
