"""What the OpenAPI document says beyond the handlers' own types: the bearer-key scheme and every error answer."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, Example, SecurityScheme

from shared.jobs.contracts import ErrorBody

BEARER = "apiKey"
SECURITY = [{BEARER: []}]
_ERRORS: dict[int, tuple[str, str, str]] = {  # status → (description, example code, example message)
    400: ("The body is not JSON.", "malformed_json", "the body is not valid JSON"),
    401: ("No API key, or not a valid one.", "auth_required",
          "send your API key in the Authorization header (scheme: Bearer); `clipjet keys create` makes one"),
    403: ("The key may not do this (e.g. use this priority).", "priority_not_allowed",
          "this API key may use priority normal or bulk, not 'fast'"),
    404: ("No such job or upload for this key.", "job_not_found", "no job with id '0193…'"),
    409: ("The job has already ended (done, failed, expired or canceled).", "job_already_ended",
          "job '0193…' has already ended: its status is done; only a queued or processing job can be canceled"),
    413: ("The body is too large.", "body_too_large", "Request Entity Too Large"),
    415: ("The body is not sent as application/json.", "unsupported_media_type",
          "send the body as JSON with Content-Type: application/json"),
    422: ("A field is missing, of the wrong type, or out of range (`field` names it).", "invalid_field",
          "Expected `float`, got `str` (at startSec)"),
    429: ("A quota or the rate limit is reached, or the queues are full; see Retry-After.", "rate_limited",
          "more than 6000 requests in 60 s; wait 12 s and slow down"),
    503: ("A dependency is failing or shedding load; see Retry-After.", "service_unavailable",
          "the database is not answering; try again in 10 s"),
}


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The documented error answers of an operation, each with the real error body and an example."""
    responses = {}
    for status in statuses:
        description, code, message = _ERRORS[status]
        example = {"error": {"code": code, "message": message}}
        responses[status] = ResponseSpec(ErrorBody, description=description, generate_examples=False,
                                         examples=[Example(summary=code, value=example)])
    return responses


def openapi_config(version: str) -> OpenAPIConfig:
    scheme = SecurityScheme(type="http", scheme="bearer", bearer_format="cj_<id>_<secret>",
                            description="An API key from `clipjet keys create` (none needed with AUTH=off).")
    return OpenAPIConfig(title="clipjet", version=version, path="/schema",
                         components=Components(security_schemes={BEARER: scheme}))

