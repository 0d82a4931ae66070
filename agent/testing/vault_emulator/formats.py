"""Value formats Vault uses on the wire: durations, timestamps, identifiers and flags.

Every function here is pure. Durations are whole seconds, as Vault's `ParseDurationSecond`
returns them; timestamps are POSIX seconds (floats) formatted the way Go prints them.
"""

from __future__ import annotations

import math
import re
import secrets
import string
import uuid
from datetime import UTC, datetime
from typing import Any

BASE62 = string.digits + string.ascii_letters

# Vault's system-wide default and maximum lease TTL: 768h.
SYSTEM_DEFAULT_TTL = 768 * 3600
SYSTEM_MAX_TTL = 768 * 3600

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


class DurationError(ValueError):
    """A value that is neither a number of seconds nor a Go duration string."""


def parse_duration(value: Any) -> int:
    """Convert a JSON duration (int seconds, "90", "1h30m", "2d" or null) to whole seconds.

    Null and "" mean 0, as in Vault, where they select the default.
    """
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise DurationError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if not isinstance(value, str):
        raise DurationError(f"invalid duration {value!r}")
    text = value.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    sign = 1
    if text.startswith("-"):
        sign, text = -1, text[1:]
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise DurationError(f"invalid duration {value!r}")
    return sign * int(total)


def go_duration(seconds: int) -> str:
    """Format whole seconds like Go's `time.Duration.String()`: 3600 -> "1h0m0s"."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def human_duration(seconds: int) -> str:
    """Format whole seconds as current Vault does in TTL warnings: 3600 -> "1h", 5400 -> "1h30m"."""
    text = go_duration(seconds)
    if text.endswith("m0s"):
        text = text[:-2]
    index = text.find("h0m")
    if index > 0:
        text = text[: index + 1] + text[index + 3 :]
    return text


def ttl_capped_warning(requested: int, effective_max: int) -> str:
    return (
        f'TTL of "{human_duration(requested)}" exceeded the effective max_ttl of '
        f'"{human_duration(effective_max)}"; TTL value is capped accordingly'
    )


def rfc3339(timestamp: float) -> str:
    """Format POSIX seconds as Go's RFC3339Nano in UTC: trailing fraction zeros trimmed."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    return text + "Z"


def whole_seconds(timestamp: float) -> int:
    """Truncate to the second, as Vault does before TTL arithmetic."""
    return math.floor(timestamp)


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_request_id() -> str:
    return str(uuid.uuid4())


def new_uuid() -> str:
    return str(uuid.uuid4())


def parse_bool(value: Any) -> bool | None:
    """Parse a flag the way Go's `strconv.ParseBool` does; None when it does not parse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value)
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def string_list(value: Any) -> list[str]:
    """Read a list field that Vault accepts as a JSON list or a comma-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value if str(item).strip()]
    raise ValueError(f"expected a list of strings, got {type(value).__name__}")


def glob_match(pattern: str, value: str) -> bool:
    """Match like Vault's `StrListContainsGlob`: `*` alone, or one `*` at the start or end."""
    if pattern == "*":
        return True
    if pattern.startswith("*") and pattern.endswith("*") and len(pattern) > 1:
        return pattern[1:-1] in value
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return pattern == value
