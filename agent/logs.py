"""Structured logging: one line per event, `event=NAME key=value ...` or the same fields as JSON.

Event names are stable (tests and dashboards read them). Callers pass only names, counts,
durations and error messages from `agent.errors`, which never contain secret values.

Records of other libraries (botocore, kopf, ...) become `event=library_log` lines with the logger
name and message. An exception attached to such a record is reduced to its type: a traceback
would break the one-line format, and a library's exception text may quote request parameters.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Libraries whose records never go below warning (see `configure_logging`).
THIRD_PARTY_LOGGERS = (
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "hvac",
    "requests",
    "watchdog",
)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log one event with its fields."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event_fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the event name and fields of a record, in the order they are written."""
    fields = getattr(record, "event_fields", None)
    if fields is not None:
        return {"event": record.getMessage(), **fields}
    library: dict[str, Any] = {
        "event": "library_log",
        "logger": record.name,
        "message": record.getMessage(),
    }
    if record.exc_info and record.exc_info[0] is not None:
        library["exception"] = record.exc_info[0].__name__
    return library


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        for key, value in _fields(record).items():
            parts.append(f"{key}={_quote(value)}")
        return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        document: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        document.update(_fields(record))
        return json.dumps(document, default=str)


def _quote(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.3f}".rstrip("0").rstrip(".")
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return json.dumps(text)


def configure_logging(*, level: str = "info", log_format: str = "text") -> None:
    """Send the agent's log records to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The AWS and HTTP libraries log request and response bodies at debug level, and those bodies
    # carry secret values. watchdog logs every file event at debug level in its own format, so a
    # log file in a watched directory would feed itself. All of them stay at warning or above,
    # whatever the agent's own level is. kopf is left alone: the controller's log relies on it.
    library_level = max(logging.WARNING, logging.getLevelName(level.upper()))
    for library in THIRD_PARTY_LOGGERS:
        logging.getLogger(library).setLevel(library_level)
