"""Every REST error is `{"error": {"code", "message", "field"}}` with a stable code."""

from __future__ import annotations

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from shared.contracts import ErrorBody, ErrorDetail
from shared.errors import ClipError, RetryLater
from shared.jobrules import refusal_for_field
from shared.logs import get_logger
from shared.scrub import scrub

log = get_logger("gateway")
MALFORMED_MARK = "JSON is malformed"


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response[ErrorBody]:
    body = ErrorBody(error=ErrorDetail(code=code, message=scrub(message), field=field))
    return Response(body, status_code=status, media_type=MediaType.JSON)


def clip_error_handler(_: Request, exc: ClipError) -> Response[ErrorBody]:
    if isinstance(exc, RetryLater):
        detail = ErrorDetail(code=exc.code, message=scrub(exc.message), retry_after_sec=exc.retry_after_sec,
                             job_id=exc.job_id)
        return Response(ErrorBody(error=detail), status_code=exc.http_status, media_type=MediaType.JSON,
                        headers={"Retry-After": str(exc.retry_after_sec)})
    return error_response(exc.http_status, exc.code, exc.message, exc.field)


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
    if exc.status_code == 400 and "json" in request.headers.get("content-type", ""):
        return error_response(400, "malformed_json", f"the body is not valid JSON: {exc.detail}")
    code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


def internal_handler(_: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled_error", error=repr(exc))
    return error_response(500, "internal_error", "an internal error occurred; try again later")


EXCEPTION_HANDLERS = {
    ClipError: clip_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_handler,
    Exception: internal_handler,
}
