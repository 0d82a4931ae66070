"""NotifyTarget documents: valid ones load, and each bad field is reported with its path and fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.declarations import load_declarations
from agent.errors import DeclarationErrors

DELETE = object()
FAKE_HEADER_VALUE = "Bearer fake-refresh-token-1"

STORE = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "SecretStore",
    "metadata": {"name": "aws-ssm"},
    "spec": {"provider": {"aws": {"service": "ParameterStore", "region": "eu-west-1"}}},
}
EXTERNAL_SECRET = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "ExternalSecret",
    "metadata": {"name": "payment-secrets"},
    "spec": {
        "secretStoreRef": {"name": "aws-ssm"},
        "data": [{"secretKey": "db-password", "remoteRef": {"key": "/payment/db-password"}}],
    },
}
HTTP_TARGET = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "NotifyTarget",
    "metadata": {"name": "spring-refresh"},
    "spec": {
        "targets": ["payment-secrets"],
        "http": {
            "url": "http://127.0.0.1:8080/actuator/refresh",
            "method": "POST",
            "timeoutSeconds": 5,
            "retries": 3,
            "headers": [
                {
                    "name": "Authorization",
                    "valueFrom": {"secretKeyRef": {"name": "refresh-token", "key": "token"}},
                },
                {"name": "X-Source", "value": "secrets-agent"},
            ],
        },
    },
}
SIGNAL_TARGET = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "NotifyTarget",
    "metadata": {"name": "nginx-reload"},
    "spec": {"signal": {"processName": "nginx", "signal": "SIGHUP"}},
}
COMMAND_TARGET = {
    "apiVersion": "secrets-agent.io/v1alpha1",
    "kind": "NotifyTarget",
    "metadata": {"name": "run-hook"},
    "spec": {"command": {"argv": ["/bin/reload-hook", "--quiet"], "timeoutSeconds": 10}},
}


def load(tmp_path: Path, *documents: dict[str, Any]):
    path = tmp_path / "declarations.yaml"
    path.write_text(yaml.safe_dump_all([STORE, EXTERNAL_SECRET, *documents]))
    return load_declarations([path])


def changed(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of `document` with the dotted `path` set to `value` (or removed)."""
    result = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return result


def test_every_kind_loads(tmp_path: Path):
    declarations = load(tmp_path, HTTP_TARGET, SIGNAL_TARGET, COMMAND_TARGET)
    by_name = {target.name: target for target in declarations.notify_targets}
    assert list(by_name) == ["spring-refresh", "nginx-reload", "run-hook"]

    http = by_name["spring-refresh"].spec
    assert http.targets == ["payment-secrets"]
    assert http.http is not None
    assert http.http.timeout_seconds == 5
    assert http.http.headers[0].value_from is not None
    assert http.http.headers[0].value_from.secret_key_ref.name == "refresh-token"

    signal = by_name["nginx-reload"].spec
    assert signal.targets is None, "no targets means every target"
    assert signal.signal is not None
    assert signal.signal.signal == "SIGHUP"

    command = by_name["run-hook"].spec.command
    assert command is not None
    assert command.argv == ["/bin/reload-hook", "--quiet"]
    assert command.retries == 3


def test_defaults(tmp_path: Path):
    minimal_http = changed(HTTP_TARGET, "spec", {"http": {"url": "https://app.internal/reload"}})
    minimal_signal = changed(SIGNAL_TARGET, "spec", {"signal": {"pidFile": "/run/app.pid"}})
    declarations = load(tmp_path, minimal_http, minimal_signal)
    http = declarations.notify_targets[0].spec.http
    assert http is not None
    assert http.method == "POST"
    assert http.timeout_seconds == 10
    assert http.retries == 3
    assert http.headers == []
    signal = declarations.notify_targets[1].spec.signal
    assert signal is not None
    assert signal.signal == "SIGHUP"


@pytest.mark.parametrize("name", ["HUP", "sigusr1", "SIGTERM", " SIGUSR2 "])
def test_signal_names_are_normalized(tmp_path: Path, name: str):
    document = changed(SIGNAL_TARGET, "spec.signal.signal", name)
    signal = load(tmp_path, document).notify_targets[0].spec.signal
    assert signal is not None
    assert signal.signal.startswith("SIG")
    assert signal.signal == signal.signal.strip().upper()


HTTP = "spec.http"
HEADER = "spec.http.headers.0"

# (case id, document, field path changed, new value, field path in the error, problem, fix)
BAD_CASES = [
    ("apiVersion of ESO", HTTP_TARGET, "apiVersion", "external-secrets.io/v1", "apiVersion",
     "not supported for NotifyTarget", "secrets-agent.io/v1alpha1"),
    ("name with capitals", HTTP_TARGET, "metadata.name", "Spring_Refresh", "metadata.name",
     "invalid notify target name", "lowercase"),
    ("no kind of notification", HTTP_TARGET, "spec.http", DELETE, "spec",
     "no kind of notification is set", "add one of them"),
    ("two kinds", HTTP_TARGET, "spec.signal", {"processName": "java"}, "spec",
     "found signal and http", "keep one of them"),
    ("unknown spec field", HTTP_TARGET, "spec.webhook", {"url": "x"}, "spec.webhook",
     "field not supported", "targets, signal, http, command"),
    ("targets empty", HTTP_TARGET, "spec.targets", [], "spec.targets",
     "the list is empty", "remove targets"),
    ("targets repeated", HTTP_TARGET, "spec.targets", ["payment-secrets", "payment-secrets"],
     "spec.targets", "named twice", "name each target once"),
    ("target unknown", HTTP_TARGET, "spec.targets", ["payment-secrets", "orders"],
     "spec.targets[1]", "unknown target 'orders'", "declared targets: payment-secrets"),
    ("target empty string", HTTP_TARGET, "spec.targets", [""], "spec.targets[0]",
     "must not be empty", "give it a value"),
    ("url ftp", HTTP_TARGET, f"{HTTP}.url", "ftp://127.0.0.1/x", f"{HTTP}.url",
     "not an http:// or https:// URL", "http://127.0.0.1:8080/actuator/refresh"),
    ("url without host", HTTP_TARGET, f"{HTTP}.url", "http:///refresh", f"{HTTP}.url",
     "no host", "write e.g."),
    ("url with password", HTTP_TARGET, f"{HTTP}.url", "http://user:pw@127.0.0.1/", f"{HTTP}.url",
     "user name or password", "valueFrom.secretKeyRef"),
    ("url bad port", HTTP_TARGET, f"{HTTP}.url", "http://127.0.0.1:99999/", f"{HTTP}.url",
     "invalid URL", "write e.g."),
    ("url with space", HTTP_TARGET, f"{HTTP}.url", "http://127.0.0.1/a b", f"{HTTP}.url",
     "space or a control character", "write e.g."),
    ("url missing", HTTP_TARGET, f"{HTTP}.url", DELETE, f"{HTTP}.url",
     "required field is missing", "add it"),
    ("method unknown", HTTP_TARGET, f"{HTTP}.method", "FETCH", f"{HTTP}.method",
     "invalid value", "'POST'"),
    ("timeout zero", HTTP_TARGET, f"{HTTP}.timeoutSeconds", 0, f"{HTTP}.timeoutSeconds",
     "more than 0 and at most 300 seconds", "write e.g. 5"),
    ("timeout too long", HTTP_TARGET, f"{HTTP}.timeoutSeconds", 301, f"{HTTP}.timeoutSeconds",
     "at most 300 seconds", "write e.g. 5"),
    ("timeout a string", HTTP_TARGET, f"{HTTP}.timeoutSeconds", "5s", f"{HTTP}.timeoutSeconds",
     "expected a number", "without quotes"),
    ("retries negative", HTTP_TARGET, f"{HTTP}.retries", -1, f"{HTTP}.retries",
     "must be from 0 to 10", "write e.g. 3"),
    ("retries too many", HTTP_TARGET, f"{HTTP}.retries", 11, f"{HTTP}.retries",
     "must be from 0 to 10", "write e.g. 3"),
    ("retries a boolean", HTTP_TARGET, f"{HTTP}.retries", True, f"{HTTP}.retries",
     "expected a whole number", "without quotes"),
    ("header name invalid", HTTP_TARGET, f"{HEADER}.name", "Bad Header", f"{HTTP}.headers[0].name",
     "invalid header name", "Authorization"),
    ("header content-length", HTTP_TARGET, f"{HEADER}.name", "Content-Length",
     f"{HTTP}.headers[0].name", "set by the agent", "remove it"),
    ("header repeated", HTTP_TARGET, f"{HTTP}.headers.1.name", "authorization", f"{HTTP}.headers",
     "appears twice", "one entry per header name"),
    ("header value and valueFrom", HTTP_TARGET, f"{HEADER}.value", FAKE_HEADER_VALUE,
     f"{HTTP}.headers[0]", "found value and valueFrom", "valueFrom.secretKeyRef"),
    ("header without value", HTTP_TARGET, f"{HEADER}.valueFrom", DELETE, f"{HTTP}.headers[0]",
     "no header value is set", "add one of them"),
    ("header value two lines", HTTP_TARGET, f"{HTTP}.headers.1.value", "a\r\nX-Injected: 1",
     f"{HTTP}.headers[1].value", "must be one line", "remove line breaks"),
    ("header secretKeyRef without key", HTTP_TARGET, f"{HEADER}.valueFrom.secretKeyRef.key",
     DELETE, f"{HTTP}.headers[0].valueFrom.secretKeyRef.key", "required field", "add it"),
    ("signal unknown", SIGNAL_TARGET, "spec.signal.signal", "SIGRELOAD", "spec.signal.signal",
     "unknown signal name", "SIGHUP, SIGUSR1 or SIGTERM"),
    ("signal KILL", SIGNAL_TARGET, "spec.signal.signal", "SIGKILL", "spec.signal.signal",
     "SIGKILL cannot be caught", "SIGHUP"),
    ("signal STOP", SIGNAL_TARGET, "spec.signal.signal", "STOP", "spec.signal.signal",
     "SIGSTOP cannot be caught", "SIGHUP"),
    ("process name with slash", SIGNAL_TARGET, "spec.signal.processName", "/usr/sbin/nginx",
     "spec.signal.processName", "without '/'", "nginx or java"),
    ("process name empty", SIGNAL_TARGET, "spec.signal.processName", "",
     "spec.signal.processName", "without '/'", "nginx or java"),
    ("pid file relative", SIGNAL_TARGET, "spec.signal", {"pidFile": "run/app.pid"},
     "spec.signal.pidFile", "absolute path", "/var/run/app/app.pid"),
    ("name and pid file", SIGNAL_TARGET, "spec.signal.pidFile", "/run/nginx.pid", "spec.signal",
     "found processName and pidFile", "keep one of them"),
    ("neither name nor pid file", SIGNAL_TARGET, "spec.signal", {"signal": "SIGHUP"},
     "spec.signal", "no way to find the process is set", "add one of them"),
    ("argv empty", COMMAND_TARGET, "spec.command.argv", [], "spec.command.argv",
     "must not be empty", "add at least one entry"),
    ("argv program empty", COMMAND_TARGET, "spec.command.argv", ["", "x"], "spec.command.argv",
     "program name (the first item) is empty", "write e.g."),
    ("argv a string", COMMAND_TARGET, "spec.command.argv", "nginx -s reload",
     "spec.command.argv", "expected a list", "start each entry"),
    ("command shell field", COMMAND_TARGET, "spec.command.shell", True, "spec.command.shell",
     "field not supported", "argv, timeoutSeconds, retries"),
    ("command timeout negative", COMMAND_TARGET, "spec.command.timeoutSeconds", -1,
     "spec.command.timeoutSeconds", "more than 0 and at most 3600 seconds", "write e.g. 5"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("document", "path", "value", "field", "problem", "fix"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_field_names_path_and_fix(
    tmp_path: Path, document, path, value, field: str, problem: str, fix: str
):
    bad = changed(document, path, value)
    with pytest.raises(DeclarationErrors) as raised:
        load(tmp_path, bad)
    errors = raised.value.errors
    assert len(errors) == 1, str(raised.value)
    [error] = errors
    assert error.field == field
    assert problem in error.problem
    assert fix in error.fix
    assert error.kind == "NotifyTarget"
    assert error.source.endswith("declarations.yaml")
    assert error.document == 3
    assert FAKE_HEADER_VALUE not in str(raised.value)


def test_duplicate_notify_target_names(tmp_path: Path):
    with pytest.raises(DeclarationErrors) as raised:
        load(tmp_path, SIGNAL_TARGET, changed(COMMAND_TARGET, "metadata.name", "nginx-reload"))
    [error] = raised.value.errors
    assert error.field == "metadata.name"
    assert "duplicate NotifyTarget 'nginx-reload'" in error.problem
    assert "document 3" in error.problem
    assert error.document == 4


def test_kind_error_lists_notify_target(tmp_path: Path):
    with pytest.raises(DeclarationErrors) as raised:
        load(tmp_path, changed(SIGNAL_TARGET, "kind", "Notifier"))
    [error] = raised.value.errors
    assert error.field == "kind"
    assert "NotifyTarget" in error.fix


def test_header_value_is_never_echoed(tmp_path: Path):
    """A credential pasted into a header value that is invalid does not appear in the error."""
    bad = changed(HTTP_TARGET, f"{HTTP}.headers.1.value", FAKE_HEADER_VALUE + "\n")
    with pytest.raises(DeclarationErrors) as raised:
        load(tmp_path, bad)
    assert FAKE_HEADER_VALUE not in str(raised.value)
    assert "fake-refresh-token-1" not in repr(raised.value.errors)
