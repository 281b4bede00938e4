"""structlog set up once per process: JSON lines off a tty, contextvars for job_id/stage, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.scrub import REDACTED, SECRET_FIELDS, scrub, scrub_value

_FORMATTER = logging.Formatter()


def _scrub_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every field of a log line through `shared.scrub` (after format_exc_info: tracebacks too)."""
    for name, value in list(event.items()):
        event[name] = REDACTED if name.lower() in SECRET_FIELDS else scrub_value(value)
    return event


def _scrubbed_records() -> None:
    """Standard-library log records (uvicorn, asyncio, botocore) scrubbed when they are made: message and
    traceback (a handler uses the `exc_text` found on the record)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "scrubs", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = scrub(record.getMessage()), None
        except Exception:  # a malformed call: logging reports it when the record is formatted
            return record
        if record.exc_info:
            record.exc_text = scrub(_FORMATTER.formatException(record.exc_info))
        return record

    factory.scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Configure structlog for this process; JSON unless stderr is a terminal."""
    _scrubbed_records()
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
