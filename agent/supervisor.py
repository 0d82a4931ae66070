"""Exec mode: `secrets-agent run -- COMMAND ...` runs the application as the agent's child.

The `Supervisor` starts the command once every target has a generation on disk, so the program
reads a complete set of files from its first instruction. After that, each burst of changes
(coalesced over `delay` seconds, as for notify targets) either sends the program a signal or
restarts it, or does nothing, as `--exec-on-change` selects. Restarts send SIGTERM, then SIGKILL to
the program's process group after `stop_timeout`, and consecutive restarts are spaced by a delay
that doubles from `restart_min` up to `restart_max`, so a flapping secret cannot restart the
program in a loop.

The program inherits the agent's environment, working directory and standard streams: it is the
user's own command. When it exits on its own, the agent stops and exits with its status (128 +
the signal number when a signal ended it). SIGTERM and SIGINT sent to the agent are passed on to
the program, and so are SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT, which otherwise change nothing in
the agent.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter

from agent.logs import log_event
from agent.models import signal_from_name

if TYPE_CHECKING:
    from agent.settings import Settings
    from agent.sync import Change, Syncer

logger = logging.getLogger("agent.supervisor")

OnChange = Literal["restart", "signal", "none"]
DEFAULT_STOP_TIMEOUT_SECONDS = 10.0
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
# Signals the agent only passes on. SIGTERM and SIGINT also stop the agent (see `request_stop`).
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
# How often readiness is checked while the program waits for the first complete write.
READINESS_POLL_SECONDS = 0.2
# How long to wait for the program to disappear after SIGKILL.
KILL_WAIT_SECONDS = 5.0
# Shell conventions for a program that cannot be started.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


def exit_status(returncode: int) -> int:
    """Turn a Popen return code into a shell-style exit status: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Starts, signals, restarts and stops the program of exec mode.

    Use: `attach(syncer, on_exit=...)` starts the supervising thread, `forward_signals()` (main
    thread) passes signals on, `request_stop(signum)` (safe in a signal handler) begins the
    stop, and `wait()` returns the exit status for the agent.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        on_change: OnChange = "restart",
        change_signal: signal.Signals = signal.SIGHUP,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_SECONDS,
        delay: float = 2.0,
        restart_min: float = RESTART_MIN_SECONDS,
        restart_max: float = RESTART_MAX_SECONDS,
    ) -> None:
        if not argv:
            raise ValueError("exec mode needs a command")
        self.argv = list(argv)
        self.on_change = on_change
        self.change_signal = change_signal
        self.stop_timeout = stop_timeout
        self.delay = delay
        self.restart_min = restart_min
        self.restart_max = restart_max
        # With a terminal, the program stays in the agent's foreground process group so it can
        # read the terminal, and the terminal itself delivers Ctrl-C to it.
        self.own_process_group = not _stdin_is_terminal()
        self._condition = threading.Condition()
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._exited: int | None = None  # the status of the current child, once it is gone
        self._restarting = False
        self._starting = False
        self._pending_due: float | None = None
        self._stop_requested_at: float | None = None
        self._status: int | None = None
        self._restart_gap = restart_min
        self._thread: threading.Thread | None = None
        self._syncer: Syncer | None = None
        self._on_exit: Callable[[], None] = lambda: None
        self._restarts: Counter | None = None

    # --- the agent's side -----------------------------------------------------------------------

    def attach(self, syncer: Syncer, *, on_exit: Callable[[], None]) -> None:
        """Start the supervising thread. `on_exit` is called when the program exits on its own
        or cannot be started, so that the agent stops."""
        self._syncer = syncer
        self._on_exit = on_exit
        self._restarts = Counter(
            "secrets_agent_exec_restarts_total",
            "Restarts of the exec mode program after a change.",
            registry=syncer.metrics.registry,
        )
        syncer.listeners.append(self._changed)
        self._thread = threading.Thread(target=self._supervise, name="exec", daemon=True)
        self._thread.start()

    def forward_signals(self) -> None:
        """Pass FORWARDED_SIGNALS on to the program; call from the main thread."""
        for number in FORWARDED_SIGNALS:
            signal.signal(number, self._forward_handler)

    def forward(self, signum: int) -> None:
        """Send `signum` to the running program, if there is one."""
        with self._condition:
            child = self._child if self._exited is None else None
        if child is not None:
            _send(child, signum)
            log_event(
                logger,
                logging.INFO,
                "exec_signal_forwarded",
                pid=child.pid,
                signal=signal.Signals(signum).name,
            )

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Begin stopping: no restart from now on, and `signum` goes to the program (SIGINT only
        when the program has its own process group, since a terminal has sent it already).
        Safe in a signal handler; returns at once."""
        with self._condition:
            first = self._stop_requested_at is None
            if first:
                self._stop_requested_at = time.monotonic()
            self._condition.notify_all()
        if signum == signal.SIGINT and not self.own_process_group:
            return
        if first or signum != signal.SIGTERM:
            self.forward(signum)

    def wait(self) -> int:
        """Wait for the program to end, SIGKILL its process group after the stop timeout, and
        return the agent's exit status: the program's, or 0 when it never started."""
        self.request_stop(signal.SIGTERM)
        with self._condition:
            assert self._stop_requested_at is not None
            deadline = self._stop_requested_at + self.stop_timeout
            while self._starting or (self._child is not None and self._exited is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            child, exited = self._child, self._exited
        if child is not None and exited is None:
            log_event(
                logger,
                logging.WARNING,
                "exec_stop_forced",
                pid=child.pid,
                timeout_s=self.stop_timeout,
            )
            self._kill(child)
        if self._thread is not None:
            self._thread.join(timeout=KILL_WAIT_SECONDS)
        with self._condition:
            if self._status is None:
                self._status = self._exited if self._exited is not None else 0
            return self._status

    def _forward_handler(self, signum: int, frame: FrameType | None) -> None:
        self.forward(signum)

    def _changed(self, changes: list[Change]) -> None:
        """Note a change (sync thread): the supervising thread acts on it after `delay`."""
        with self._condition:
            if self._child is not None and self.on_change != "none":
                if self._pending_due is None:
                    self._pending_due = time.monotonic() + self.delay
            self._condition.notify_all()

    # --- the supervising thread -----------------------------------------------------------------

    def _supervise(self) -> None:
        if not self._wait_until_ready():
            return
        if not self._start():
            self._on_exit()
            return
        while True:
            action = self._next_action()
            if action == "stop":
                return
            if action == "exited":
                self._on_exit()
                return
            if self.on_change == "signal":
                self._signal_change()
            elif not self._restart():
                self._on_exit()
                return

    def _wait_until_ready(self) -> bool:
        """Wait until every target has a generation; False when the agent stops first."""
        assert self._syncer is not None
        log_event(logger, logging.INFO, "exec_waiting", program=_program(self.argv))
        while True:
            with self._condition:
                if self._stop_requested_at is not None:
                    return False
            if self._syncer.readiness()[0]:
                return True
            with self._condition:
                self._condition.wait(READINESS_POLL_SECONDS)

    def _next_action(self) -> Literal["stop", "exited", "change"]:
        with self._condition:
            while True:
                if self._stop_requested_at is not None:
                    return "stop"
                if self._exited is not None:
                    return "exited"
                due = self._pending_due
                if due is not None and self.on_change == "restart":
                    due = max(due, self._started_at + self._restart_gap)
                if due is not None and due <= time.monotonic():
                    self._pending_due = None
                    return "change"
                timeout = None if due is None else due - time.monotonic()
                self._condition.wait(timeout)

    def _start(self) -> bool:
        """Start the program unless the agent is stopping; False (with the exit status set)
        when it cannot be started."""
        with self._condition:
            if self._stop_requested_at is not None:
                return True
            self._starting = True
        try:
            child = subprocess.Popen(self.argv, process_group=0 if self.own_process_group else None)
        except OSError as error:
            status = EXIT_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_NOT_EXECUTABLE
            log_event(
                logger,
                logging.ERROR,
                "exec_start_failed",
                program=_program(self.argv),
                error=error.strerror or type(error).__name__,
                exit_code=status,
            )
            with self._condition:
                self._status = status
                self._starting = False
                self._condition.notify_all()
            return False
        with self._condition:
            self._starting = False
            self._condition.notify_all()
            if self._stop_requested_at is not None:
                # A stop arrived while the program was starting: pass it on like any other.
                _send(child, signal.SIGTERM)
            self._child = child
            self._exited = None
            self._started_at = time.monotonic()
        threading.Thread(
            target=self._reap, args=(child,), name=f"exec-wait-{child.pid}", daemon=True
        ).start()
        log_event(logger, logging.INFO, "exec_started", program=_program(self.argv), pid=child.pid)
        return True

    def _reap(self, child: subprocess.Popen[bytes]) -> None:
        """Wait for one program (its own thread) and record how it ended."""
        status = exit_status(child.wait())
        with self._condition:
            if self._child is child:
                self._exited = status
            self._condition.notify_all()
            restarting = self._restarting
        if not restarting:
            log_event(logger, logging.INFO, "exec_exited", pid=child.pid, exit_code=status)

    def _signal_change(self) -> None:
        with self._condition:
            child = self._child if self._exited is None else None
        if child is None:
            return
        _send(child, self.change_signal)
        log_event(
            logger, logging.INFO, "exec_signalled", pid=child.pid, signal=self.change_signal.name
        )

    def _restart(self) -> bool:
        """Stop the program (SIGTERM, then SIGKILL) and start it again; False when the new one
        cannot be started. The gap before the next restart doubles, and it is reset when the
        program had run for `restart_max` seconds."""
        with self._condition:
            child = self._child
            uptime = time.monotonic() - self._started_at
            self._restarting = True
        assert child is not None
        log_event(
            logger,
            logging.INFO,
            "exec_restarting",
            pid=child.pid,
            uptime_s=round(uptime, 1),
            gap_s=round(self._restart_gap, 2),
        )
        try:
            _send(child, signal.SIGTERM)
            if not self._wait_exited(child, self.stop_timeout):
                log_event(
                    logger,
                    logging.WARNING,
                    "exec_stop_forced",
                    pid=child.pid,
                    timeout_s=self.stop_timeout,
                )
                self._kill(child)
        finally:
            with self._condition:
                self._restarting = False
        with self._condition:
            if self._stop_requested_at is not None:
                return True  # the agent is stopping: `wait` reports the last status
        if self._restarts is not None:
            self._restarts.inc()
        if uptime >= self.restart_max:
            self._restart_gap = self.restart_min
        else:
            self._restart_gap = min(self.restart_max, self._restart_gap * 2)
        return self._start()

    def _wait_exited(self, child: subprocess.Popen[bytes], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._child is child and self._exited is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def _kill(self, child: subprocess.Popen[bytes]) -> None:
        """SIGKILL the program, and its whole process group when it has one of its own."""
        try:
            if self.own_process_group:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.kill()
        except (ProcessLookupError, PermissionError):
            pass
        self._wait_exited(child, KILL_WAIT_SECONDS)


def build_supervisor(settings: Settings, command: Sequence[str]) -> Supervisor:
    """Create the supervisor of `run -- COMMAND` from the settings."""
    return Supervisor(
        command,
        on_change=settings.exec_on_change,
        change_signal=signal_from_name(settings.exec_signal),
        stop_timeout=settings.exec_stop_timeout,
        delay=settings.notify_delay,
    )


def _send(child: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the program unless it has been reaped (so its pid may belong to someone else)."""
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def _program(argv: Sequence[str]) -> str:
    """Return the program's name for logs; the arguments may carry values and are not logged."""
    return os.path.basename(argv[0])


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and os.isatty(sys.stdin.fileno())
    except (OSError, ValueError):
        return False
