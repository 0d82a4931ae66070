"""Structured logging: one line per event, `event=NAME key=value ...` or the same fields as JSON.

Event names are stable (tests and dashboards read them). Callers pass only names, counts,
durations and error messages from `agent.errors`, which never contain secret values.
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


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}"]
        parts.append(f"event={_quote(record.getMessage())}")
        for key, value in getattr(record, "event_fields", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exception={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        document: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        document.update(getattr(record, "event_fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
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
