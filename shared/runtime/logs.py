"""structlog set up once per process: JSON lines off a tty, contextvars for job_id/stage, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.runtime.scrub import REDACTED, SECRET_FIELDS, scrub, scrub_value

_FORMATTER = logging.Formatter()
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "nats", "botocore", "aiobotocore", "asyncio")
QUIET_LOGGERS = ("botocore", "aiobotocore", "uvicorn.access")


def _scrub_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every field of a log line through `shared.runtime.scrub` (after format_exc_info: tracebacks too)."""
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
    """Configure structlog for this process; JSON unless stderr is a terminal. Standard-library loggers (uvicorn,
    nats, botocore, asyncio) write through the same processors: one line format for everything."""
    _scrubbed_records()
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, _scrub_processor, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(numeric_level, shared, renderer)


def _route_stdlib_logging(level: int, shared: list[Any], renderer: Any) -> None:
    """The root logger's one handler renders records like structlog's lines (`logger` names the library)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _scrub_processor, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "clipjet", False)]:
        root.removeHandler(old)
    handler.clipjet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:  # they log through the root handler, not handlers of their own
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    for name in QUIET_LOGGERS:  # chatty at INFO: their warnings and errors only
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
