"""Secret key and target name rules, file ownership validation, and snapshot checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.writer import FileOwnership, ProjectionError, Writer, check_secret_key

# (name, reason when nested keys are off, reason when they are on); None means accepted.
KEY_CASES = [
    ("db-password", None, None),
    ("application.properties", None, None),
    (".hidden", None, None),
    ("a..b", None, None),
    ("é" * 127, None, None),  # 254 bytes in UTF-8
    ("x" * 255, None, None),
    ("", "is empty", "is empty"),
    (".", "is '.'", "is '.'"),
    ("..", "is '..'", "is '..'"),
    ("..data", "starts with '..'", "starts with '..'"),
    ("..2024_01_01_00_00_00.1", "starts with '..'", "starts with '..'"),
    ("a\x00b", "contains a NUL byte", "contains a NUL byte"),
    ("db\npassword", "contains the control character U+000A", "contains the control"),
    ("db\tpassword", "contains the control character U+0009", "contains the control"),
    ("db\x7f", "contains the control character U+007F", "contains the control"),
    ("db\x85", "contains the control character U+0085", "contains the control"),
    ("tls/db\rkey", "contains '/'", "has path segment 2 that contains the control character"),
    (" db-password", "starts or ends with whitespace", "starts or ends with whitespace"),
    ("db-password ", "starts or ends with whitespace", "starts or ends with whitespace"),
    ("db-password\u00a0", "starts or ends with whitespace", "starts or ends with whitespace"),
    ("tls /key", "contains '/'", "has path segment 1 that starts or ends with whitespace"),
    ("db password", None, None),
    (".hidden.d", None, None),
    ("x" * 256, "is 256 bytes in UTF-8", "is 256 bytes in UTF-8"),
    ("é" * 128, "is 256 bytes in UTF-8", "is 256 bytes in UTF-8"),
    ("bad\udcffsurrogate", "is not valid UTF-8", "is not valid UTF-8"),
    ("a/b", "contains '/' and nested keys are off", None),
    ("tls/certs/server.pem", "contains '/'", None),
    ("/etc/passwd", "contains '/'", "is an absolute path"),
    ("../x", "contains '/'", "has path segment 1 that is '..'"),
    ("a/../b", "contains '/'", "has path segment 2 that is '..'"),
    ("a/./b", "contains '/'", "has path segment 2 that is '.'"),
    ("a//b", "contains '/'", "has path segment 2 that is empty"),
    ("a/", "contains '/'", "has path segment 2 that is empty"),
    ("..data/x", "contains '/'", "has path segment 1 that starts with '..'"),
    ("a/..hidden", "contains '/'", "has path segment 2 that starts with '..'"),
    ("a/" + "x" * 256, "contains '/'", "has path segment 2 that is 256 bytes"),
    ("/".join(["x" * 200] * 20), "contains '/'", None),  # 4019 bytes
    ("/".join(["x" * 200] * 21), "contains '/'", "is 4220 bytes in UTF-8"),
]


@pytest.mark.parametrize(("name", "flat_reason", "nested_reason"), KEY_CASES)
def test_secret_key_rules(name: str, flat_reason: str | None, nested_reason: str | None) -> None:
    flat = check_secret_key(name)
    nested = check_secret_key(name, allow_nested=True)
    if flat_reason is None:
        assert flat is None
    else:
        assert flat is not None
        assert flat.startswith(flat_reason)
    if nested_reason is None:
        assert nested is None
    else:
        assert nested is not None
        assert nested.startswith(nested_reason)


def test_secret_key_reason_omits_name() -> None:
    reason = check_secret_key("unusual-name-zz/q")
    assert reason is not None
    assert "unusual-name-zz" not in reason


def test_secret_key_not_string() -> None:
    assert check_secret_key(b"bytes-name") == "is not a string"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arguments",
    [{"mode": 0o1400}, {"mode": -1}, {"uid": -1}, {"gid": 2**32 - 1}, {"uid": 2**32}],
)
def test_file_ownership_rejects_invalid(arguments: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        FileOwnership(**arguments)


def test_file_ownership_defaults() -> None:
    ownership = FileOwnership()
    assert ownership.mode == 0o400
    assert ownership.uid is None
    assert ownership.gid is None


@pytest.mark.parametrize("target", ["", ".", "..", "..data", "a/b", "x" * 256, "a\x00"])
def test_project_rejects_unsafe_target(output_dir: Path, target: str) -> None:
    writer = Writer(output_dir)
    with pytest.raises(ProjectionError) as caught:
        writer.project(target, {"key": b"fake-value-1"})
    assert caught.value.step == "check target name"
    assert isinstance(caught.value, AgentError)
    assert list(output_dir.iterdir()) == []


@pytest.mark.parametrize("method", ["read", "generation"])
def test_read_rejects_unsafe_target(output_dir: Path, method: str) -> None:
    writer = Writer(output_dir)
    with pytest.raises(ProjectionError):
        getattr(writer, method)("../escape")


def test_project_rejects_unsafe_key(output_dir: Path) -> None:
    writer = Writer(output_dir)
    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", {"good": b"fake-secret-value-1", "../evil": b"fake-2"})
    message = str(caught.value)
    assert "payment" in message
    assert "'../evil'" in message
    assert "nested keys are off" in message
    assert "fake-secret-value-1" not in message
    assert not (output_dir / "payment" / "good").exists()


def test_project_rejects_nested_when_off(output_dir: Path) -> None:
    writer = Writer(output_dir)
    with pytest.raises(ProjectionError):
        writer.project("payment", {"tls/server.pem": b"fake-pem"})


def test_project_rejects_file_directory_clash(output_dir: Path) -> None:
    writer = Writer(output_dir, allow_nested=True)
    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", {"tls": b"fake-1", "tls/server.pem": b"fake-2"})
    assert "'tls'" in str(caught.value)
    assert "'tls/server.pem'" in str(caught.value)


def test_project_rejects_non_bytes(output_dir: Path) -> None:
    writer = Writer(output_dir)
    with pytest.raises(ProjectionError) as caught:
        writer.project("payment", {"key": "fake-text-value"})  # type: ignore[dict-item]
    assert "str, not bytes" in str(caught.value)
    assert "fake-text-value" not in str(caught.value)
