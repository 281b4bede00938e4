"""structlog set up once per process: JSON lines off a tty, contextvars for job_id/stage, secrets scrubbed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")
_SECRET_FIELDS = frozenset({"api_key", "secret_key", "s3_secret_key", "password", "token", "authorization"})


def scrub(text: str) -> str:
    """Drop query strings from URLs (signed URLs carry their signature there)."""
    return _QUERY.sub(r"\1?<redacted>", text)


def _scrub_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in list(event.items()):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "<redacted>"
        elif isinstance(value, str):
            event[name] = scrub(value)
    return event


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Configure structlog for this process; JSON unless stderr is a terminal."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
