"""The kinds of notify target: a signal to a process, an HTTP request, a command.

Each kind is an `Action` whose `deliver` makes one attempt and reports it as an `Attempt`. The
workers in `agent.notify` decide when to deliver and whether to retry. Only names are delivered,
never values: target names and `target/secret key` names. Header values are never logged, and
neither is a URL's path or query. A command's output is passed through to the agent's own
stdout and stderr in whole lines, never into a log record, so no log line of the agent can contain
what a command prints.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from agent import __version__
from agent.declarations import NotifyTargetDeclaration
from agent.errors import AgentError, StoreError
from agent.models import NotifyCommand, NotifyHttp, NotifySignal, signal_from_name
from agent.notify_output import forward_lines
from agent.refs import Refs

# The variables a command receives, in addition to the agent's own environment.
CHANGED_TARGETS_VARIABLE = "SECRETS_AGENT_CHANGED_TARGETS"
CHANGED_KEYS_VARIABLE = "SECRETS_AGENT_CHANGED_KEYS"
CHANGES_VARIABLE = "SECRETS_AGENT_CHANGES"
NOTIFY_TARGET_VARIABLE = "SECRETS_AGENT_NOTIFY_TARGET"
# How much of an HTTP response body is read (and dropped) before the connection closes.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_PID_FILE_BYTES = 64


@dataclass(frozen=True)
class ChangedNames:
    """The names one delivery carries: the changed targets and their changed secret keys."""

    keys_by_target: dict[str, tuple[str, ...]]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys_by_target))

    def keys(self, target: str) -> tuple[str, ...]:
        return tuple(sorted(self.keys_by_target[target]))

    @property
    def qualified_keys(self) -> tuple[str, ...]:
        """Return `target/secret key` names, sorted."""
        return tuple(f"{target}/{key}" for target in self.targets for key in self.keys(target))


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt. `error` is a message without values, `retryable`
    is whether trying again can help, and `fields` go to the log line."""

    result: Literal["success", "no_process", "error"]
    error: str = ""
    retryable: bool = True
    fields: dict[str, object] = field(default_factory=dict)


class Action(Protocol):
    """One kind of notification: deliver the names once and report how it went."""

    kind: str

    def deliver(self, names: ChangedNames) -> Attempt: ...

    def cancel(self) -> None:
        """Stop an attempt in progress, if the kind can; called while the agent stops."""


# --- signal ---------------------------------------------------------------------------------------


def signal_refusal(pid: int) -> str | None:
    """Return why the agent must never signal `pid`, or None when it may.

    Pid 1 is the pod's pause process under `shareProcessNamespace`, or the container's own init
    otherwise. Zero and negative numbers address process groups, and -1 every process, in
    kill(2). The agent itself is excluded as well.
    """
    if pid <= 0:
        return "is not a process id (0 and negative numbers address process groups)"
    if pid == 1:
        return "is pid 1, the pod's pause process or the container's init"
    if pid == os.getpid():
        return "is the agent itself"
    return None


@dataclass(frozen=True)
class _ProcessInfo:
    pid: int
    parent: int
    name: str
    program: str


def _read_process(proc: Path, pid: int) -> _ProcessInfo | None:
    """Read a process's name, program and parent; None when it is gone, a zombie or a kernel
    thread (both have an empty command line)."""
    try:
        name = (proc / str(pid) / "comm").read_bytes().decode(errors="replace").rstrip("\n")
        command_line = (proc / str(pid) / "cmdline").read_bytes()
        status = (proc / str(pid) / "stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    if not command_line:
        return None
    # The name in `stat` is in parentheses and may itself contain ") ", so split at the last one.
    after_name = status.rpartition(")")[2].split()
    if len(after_name) < 2 or after_name[0] == "Z" or not after_name[1].isdigit():
        return None
    program = command_line.split(b"\x00", 1)[0].decode(errors="replace")
    return _ProcessInfo(pid, int(after_name[1]), name, os.path.basename(program))


def find_processes(name: str, *, proc: Path = Path("/proc")) -> list[int]:
    """Return the pids of the processes called `name` whose parent is not also called `name`.

    A process matches when its kernel name (`/proc/<pid>/comm`) or the last part of its argv[0]
    is `name`. Only the top of each matching tree is returned, so the master process of nginx
    or gunicorn is found and its workers are not. Pids the agent must never signal (see
    `signal_refusal`) are left out.
    """
    matches: dict[int, int] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or signal_refusal(int(entry.name)) is not None:
            continue
        info = _read_process(proc, int(entry.name))
        if info is not None and name in (info.name, info.program):
            matches[info.pid] = info.parent
    return sorted(pid for pid, parent in matches.items() if parent not in matches)


class SignalAction:
    """Sends a signal to one process of the pod, found by name or by pid file.

    When several unrelated processes match the name, nothing is sent and the attempt fails:
    signalling a process that was not meant is worse than a missed reload. A missing process is
    reported as `no_process` and not retried, because a process that starts later reads the new
    files anyway.
    """

    kind = "signal"

    def __init__(self, spec: NotifySignal, *, proc: Path = Path("/proc")) -> None:
        self.spec = spec
        self.signal = signal_from_name(spec.signal)
        self.proc = proc

    def deliver(self, names: ChangedNames) -> Attempt:
        if self.spec.pid_file is not None:
            found = self._pid_from_file(Path(self.spec.pid_file))
        else:
            found = self._pid_by_name(self.spec.process_name or "")
        if isinstance(found, Attempt):
            return found
        return self._send(found)

    def cancel(self) -> None:
        """Do nothing: sending a signal does not block."""

    def _pid_by_name(self, name: str) -> int | Attempt:
        pids = find_processes(name, proc=self.proc)
        if not pids:
            return Attempt("no_process", f"no process named {name!r} is running", fields={})
        if len(pids) > 1:
            listed = ", ".join(str(pid) for pid in pids)
            return Attempt(
                "error",
                f"{len(pids)} unrelated processes are named {name!r} (pids {listed}); "
                "use signal.pidFile, or run one such process per pod",
                retryable=False,
            )
        return pids[0]

    def _pid_from_file(self, path: Path) -> int | Attempt:
        try:
            with open(path, "rb") as stream:
                text = stream.read(MAX_PID_FILE_BYTES + 1)
        except FileNotFoundError:
            return Attempt("no_process", f"pid file {path} not found")
        except OSError as error:
            return Attempt(
                "error",
                f"cannot read pid file {path} ({error.strerror}); make it readable by the agent",
                retryable=False,
            )
        content = text.strip()
        if len(text) > MAX_PID_FILE_BYTES or not content.isdigit():
            return Attempt(
                "error", f"pid file {path} does not contain a process id", retryable=False
            )
        pid = int(content)
        refusal = signal_refusal(pid)
        if refusal is not None:
            return Attempt(
                "error", f"pid {pid} from {path} {refusal}; it is never signalled", retryable=False
            )
        return pid

    def _send(self, pid: int) -> Attempt:
        """Send the signal through a pidfd when the kernel has them, so a pid reused between
        finding the process and signalling it is noticed instead of signalled."""
        fields: dict[str, object] = {"pid": pid, "signal": self.signal.name}
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:
            return Attempt("no_process", f"process {pid} exited", fields=fields)
        except (AttributeError, OSError):
            descriptor = None  # no pidfd support: plain kill(2)
        try:
            if not self._still_matches(pid):
                return Attempt("no_process", f"process {pid} exited", fields=fields)
            if descriptor is None:
                os.kill(pid, self.signal)
            else:
                signal.pidfd_send_signal(descriptor, self.signal)
        except ProcessLookupError:
            return Attempt("no_process", f"process {pid} exited", fields=fields)
        except PermissionError:
            return Attempt(
                "error",
                f"not permitted to signal process {pid}; run the agent with the application's "
                "user id, or give it the CAP_KILL capability",
                retryable=False,
                fields=fields,
            )
        finally:
            if descriptor is not None:
                os.close(descriptor)
        return Attempt("success", fields=fields)

    def _still_matches(self, pid: int) -> bool:
        if self.spec.process_name is None:
            return (self.proc / str(pid)).exists()
        info = _read_process(self.proc, pid)
        return info is not None and self.spec.process_name in (info.name, info.program)


# --- HTTP -----------------------------------------------------------------------------------------


class HttpAction:
    """Sends one HTTP request. Any 2xx status is success; redirects are not followed.

    Header values from a Secret are read again for every request, so a rotated credential is
    used from the next request on. No proxy variable is used: the usual target is the
    application in the same pod, on 127.0.0.1.
    """

    kind = "http"

    def __init__(self, spec: NotifyHttp, *, refs: Refs, notify_target: str) -> None:
        self.spec = spec
        self.refs = refs
        self.notify_target = notify_target
        parts = urlsplit(spec.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Logged in place of the URL, whose path or query may carry a token.
        self.endpoint = f"{parts.scheme}://{parts.netloc}"

    def deliver(self, names: ChangedNames) -> Attempt:
        fields: dict[str, object] = {"endpoint": self.endpoint, "method": self.spec.method}
        try:
            headers = self._headers()
        except AgentError as error:
            return Attempt("error", str(error), fields=fields)
        connection = self._connection()
        started = time.perf_counter()
        try:
            connection.request(self.spec.method, self.request_target, headers=headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)  # the body is never logged: it may echo values
            status = response.status
        except TimeoutError:
            timeout = self.spec.timeout_seconds
            return Attempt("error", f"request timed out after {timeout:g} s", fields=fields)
        except (OSError, http.client.HTTPException) as error:
            # An HTTPException's text may quote the response, so only its type is reported.
            reason = getattr(error, "strerror", None) or type(error).__name__
            return Attempt("error", f"request failed: {reason}", fields=fields)
        finally:
            connection.close()
        fields.update(status=status, duration_ms=round((time.perf_counter() - started) * 1000))
        if 200 <= status < 300:
            return Attempt("success", fields=fields)
        return Attempt("error", f"HTTP status {status}, expected 2xx", fields=fields)

    def cancel(self) -> None:
        """Do nothing: the request timeout bounds an attempt in progress."""

    def _connection(self) -> http.client.HTTPConnection:
        timeout = self.spec.timeout_seconds
        if self.https:
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"secrets-agent/{__version__}"}
        for index, header in enumerate(self.spec.headers):
            if header.value is not None:
                headers[header.name] = header.value
                continue
            assert header.value_from is not None  # the model requires one of them
            where = f"spec.http.headers[{index}].valueFrom.secretKeyRef"
            try:
                raw = self.refs.read_secret(
                    header.value_from.secret_key_ref, store=self.notify_target, field=where
                )
            except StoreError as error:
                raise AgentError(f"{error.message}; {error.fix}") from None
            value = raw.decode("utf-8", errors="replace").strip()
            if any(character in value for character in "\r\n\x00"):
                raise AgentError(
                    f"{where}: the mounted value has a line break or NUL inside; "
                    "store the header value on one line"
                )
            headers[header.name] = value
        return headers


# --- command --------------------------------------------------------------------------------------


class CommandAction:
    """Runs a program without a shell, with the changed names (never values) in its environment.

    The program's stdout and stderr are passed through to the agent's own stdout and stderr in
    whole lines (agent.notify_output), so its lines reach the container log as its own output and
    never run into a log line of the agent. The agent does not parse or log them, so a value that
    the program prints cannot enter a log line. On timeout the program's whole process group is
    killed.
    """

    kind = "command"

    def __init__(self, spec: NotifyCommand, *, notify_target: str) -> None:
        self.spec = spec
        self.notify_target = notify_target
        self._lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None

    def deliver(self, names: ChangedNames) -> Attempt:
        fields: dict[str, object] = {"program": os.path.basename(self.spec.argv[0])}
        started = time.perf_counter()
        try:
            process = subprocess.Popen(
                self.spec.argv,
                env=self._environment(names),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a process group of its own, to kill on timeout
            )
        except OSError as error:
            return Attempt(
                "error",
                f"cannot start {self.spec.argv[0]!r}: {error.strerror}; check spec.command.argv",
                retryable=False,
                fields=fields,
            )
        assert process.stdout is not None and process.stderr is not None
        copiers = [
            forward_lines(process.stdout, to_stderr=False, name=self.notify_target),
            forward_lines(process.stderr, to_stderr=True, name=self.notify_target),
        ]
        with self._lock:
            self._running = process
        try:
            code = process.wait(timeout=self.spec.timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            fields["duration_ms"] = _milliseconds_since(started)
            return Attempt(
                "error", f"timed out after {self.spec.timeout_seconds:g} s", fields=fields
            )
        finally:
            with self._lock:
                self._running = None
            # Pass the output on before the agent logs the outcome. A background process of the
            # command that keeps the pipes open must not hold up delivery, so the wait is short
            # and its later output still passes through.
            for copier in copiers:
                copier.join(timeout=OUTPUT_DRAIN_SECONDS)
        fields.update(exit_code=code, duration_ms=_milliseconds_since(started))
        if code == 0:
            return Attempt("success", fields=fields)
        return Attempt("error", f"exited with status {code}", fields=fields)

    def cancel(self) -> None:
        """Kill the command that is running, if any."""
        with self._lock:
            process = self._running
        if process is not None:
            _kill_group(process)

    def _environment(self, names: ChangedNames) -> dict[str, str]:
        environment = dict(os.environ)
        environment[NOTIFY_TARGET_VARIABLE] = self.notify_target
        environment[CHANGED_TARGETS_VARIABLE] = ",".join(names.targets)
        environment[CHANGED_KEYS_VARIABLE] = ",".join(names.qualified_keys)
        # Exact even when a secret key contains a comma.
        environment[CHANGES_VARIABLE] = json.dumps(
            {target: list(names.keys(target)) for target in names.targets}
        )
        return environment


# How long a delivery waits, after the command exited, for its last output to be passed on.
OUTPUT_DRAIN_SECONDS = 1.0


def _milliseconds_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def build_action(declaration: NotifyTargetDeclaration, *, refs: Refs) -> Action:
    """Return the action for a notify target's kind."""
    spec = declaration.spec
    if spec.signal is not None:
        return SignalAction(spec.signal)
    if spec.http is not None:
        return HttpAction(spec.http, refs=refs, notify_target=declaration.name)
    assert spec.command is not None  # the model requires exactly one kind
    return CommandAction(spec.command, notify_target=declaration.name)
