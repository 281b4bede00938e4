"""Every REST error is `{"error": {"code", "message", "field"}}` with a stable code."""

from __future__ import annotations

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from shared.errors import ClipError, RetryLater
from shared.jobs.contracts import ErrorBody, ErrorDetail
from shared.jobs.jobrules import refusal_for_field
from shared.runtime.logs import get_logger
from shared.runtime.scrub import scrub

log = get_logger("gateway")
MALFORMED_MARK = "JSON is malformed"


def error_body(code: str, message: str, field: str | None = None) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(code=code, message=scrub(message), field=field))


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response[ErrorBody]:
    return Response(error_body(code, message, field), status_code=status, media_type=MediaType.JSON)


def clip_error_parts(exc: ClipError) -> tuple[int, ErrorBody, dict[str, str] | None]:
    """A ClipError's status, body and extra headers (the Litestar handler's and the fast path's: fastpath.py)."""
    if isinstance(exc, RetryLater):
        detail = ErrorDetail(code=exc.code, message=scrub(exc.message), retry_after_sec=exc.retry_after_sec,
                             job_id=exc.job_id)
        return exc.http_status, ErrorBody(error=detail), {"Retry-After": str(exc.retry_after_sec)}
    return exc.http_status, error_body(exc.code, exc.message, exc.field), None


def http_error_parts(content_type: str, exc: HTTPException) -> tuple[int, ErrorBody]:
    """An HTTPException's status and body; `content_type`: the request's Content-Type header ("" when none)."""
    if exc.status_code == 400 and "json" in content_type:
        return 400, error_body("malformed_json", f"the body is not valid JSON: {exc.detail}")
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
    return exc.status_code, error_body(code, str(exc.detail))


def internal_error_parts(exc: Exception) -> tuple[int, ErrorBody]:
    log.exception("unhandled_error", error=repr(exc))
    return 500, error_body("internal_error", "an internal error occurred; try again later")


def clip_error_handler(_: Request, exc: ClipError) -> Response[ErrorBody]:
    status, body, headers = clip_error_parts(exc)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def validation_handler(_: Request, exc: ValidationException) -> Response[ErrorBody]:
    """Map Litestar/msgspec body validation to stable codes."""
    if MALFORMED_MARK in str(exc.detail):
        return error_response(400, "malformed_json", f"the body is not valid JSON: {exc.detail}")
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems else {}
    field, message = str(first.get("key", "")) or None, str(first.get("message", exc.detail))
    refusal = refusal_for_field(field, message)  # the codes a message published straight to NATS gets too
    return error_response(422, refusal.code, refusal.message, refusal.field)


def http_handler(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    status, body = http_error_parts(request.headers.get("content-type", ""), exc)
    return Response(body, status_code=status, media_type=MediaType.JSON)


def internal_handler(_: Request, exc: Exception) -> Response[ErrorBody]:
    status, body = internal_error_parts(exc)
    return Response(body, status_code=status, media_type=MediaType.JSON)


EXCEPTION_HANDLERS = {
    ClipError: clip_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_handler,
    Exception: internal_handler,
}
