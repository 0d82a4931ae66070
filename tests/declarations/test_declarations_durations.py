"""Go durations: `parse_duration` accepts what Go's time.ParseDuration accepts, negatives aside.

The expected values follow Go's rules: a sequence of decimal numbers, each with an optional
fraction and a unit (ns, us, µs, μs, ms, s, m, h), an optional sign, and `0` alone without a unit.
"""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from agent.models import ExternalSecretSpec, parse_duration

VALID = [
    ("0", 0.0),
    ("+0", 0.0),
    ("-0", 0.0),
    ("0s", 0.0),
    ("-0s", 0.0),
    ("0h0m0s", 0.0),
    ("1h", 3600.0),
    ("30m", 1800.0),
    ("90s", 90.0),
    ("1h30m", 5400.0),
    ("1h0m0s", 3600.0),  # External Secrets Operator's default, as Go prints it
    ("2h45m", 9900.0),
    ("1.5h", 5400.0),
    ("1.h", 3600.0),
    (".5s", 0.5),
    ("1m30.5s", 90.5),
    ("300ms", 0.3),
    ("100us", 0.0001),
    ("100\u00b5s", 0.0001),  # micro sign
    ("100\u03bcs", 0.0001),  # Greek small letter mu
    ("10ns", 1e-8),
    ("+1h", 3600.0),
    ("1h1h", 7200.0),
    ("2562047h", 2562047 * 3600.0),
]

INVALID = [
    ("1 h", "contains a space"),
    ("1h 30m", "contains a space"),
    (" 1h", "expected a number"),
    ("10", "has no unit"),
    ("1h30", "has no unit"),
    ("00", "has no unit"),
    ("-5m", "must not be negative"),
    ("-1.5h", "must not be negative"),
    ("h", "expected a number"),
    (".", "expected a number"),
    (".s", "expected a number"),
    ("", "empty"),
    ("+", "empty"),
    ("-", "empty"),
    ("1d", "days"),
    ("2w", "days"),
    ("1H", "unknown unit"),
    ("1hr", "unknown unit"),
    ("1e3s", "unknown unit"),
    ("0x10s", "unknown unit"),
    ("1.5.5h", "has no unit"),
    ("2562048h", "maximum"),
    ("9999999999999999999999h", "maximum"),
]


@pytest.mark.parametrize(("text", "seconds"), VALID, ids=[text for text, _ in VALID])
def test_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[repr(text) for text, _ in INVALID])
def test_duration_invalid(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)

    message = str(caught.value)
    assert reason in message
    assert message.startswith("invalid duration")


@pytest.mark.parametrize("text", ["fake-token-1", "12fake", "1h fake", "99999999999999999999h"])
def test_duration_message_omits_input(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)

    assert text not in str(caught.value)
    assert "fake" not in str(caught.value)


def spec_with_interval(value: object) -> dict:
    return {
        "refreshInterval": value,
        "secretStoreRef": {"name": "store"},
        "data": [{"secretKey": "a", "remoteRef": {"key": "b"}}],
    }


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("15m", 900.0), (0, 0.0), (0.0, 0.0), (datetime.timedelta(minutes=5), 300.0)],
    ids=["string", "unquoted zero", "float zero", "timedelta from Python"],
)
def test_refresh_interval_accepted(value: object, seconds: float) -> None:
    spec = ExternalSecretSpec.model_validate(spec_with_interval(value))

    assert spec.refresh_interval == seconds


def test_refresh_interval_defaults_to_one_hour() -> None:
    spec = ExternalSecretSpec.model_validate(
        {
            "secretStoreRef": {"name": "store"},
            "data": [{"secretKey": "a", "remoteRef": {"key": "b"}}],
        }
    )

    assert spec.refresh_interval == 3600.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10, "needs a unit"),
        (1.5, "needs a unit"),
        (True, "not true or false"),
        (["1h"], "expected a duration string"),
        (datetime.timedelta(seconds=-1), "expected a duration string"),
    ],
    ids=["integer", "float", "boolean", "list", "negative timedelta"],
)
def test_refresh_interval_rejected(value: object, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExternalSecretSpec.model_validate(spec_with_interval(value))

    errors = caught.value.errors(include_url=False, include_input=False)
    assert len(errors) == 1
    assert errors[0]["loc"] == ("refreshInterval",)
    assert reason in str(errors[0]["ctx"]["error"])
