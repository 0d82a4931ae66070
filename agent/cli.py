"""The `secrets-agent` command: `check`, `once` (init container) and `run` (sidecar).

Exit codes: 0 when everything required was written (or the declarations are valid for
`check`), 1 when a store refused, a remote key is missing or a target could not be written, 2 for
invalid declarations or settings, and 128 + the signal number when SIGTERM, SIGINT or SIGHUP
stops `once` early. Errors are printed as one readable message each, never as a traceback, and
never with a secret value.
"""

from __future__ import annotations

import argparse
import gc
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import AgentError, DeclarationErrors, SettingsError
from agent.logs import configure_logging, log_event

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

# How long `run` waits after SIGTERM for the current round and the store cleanup.
STOP_SECONDS = 0.8
# Signals that stop `once` early; it then exits with 128 + the signal number, as shells report.
ONCE_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Signals that `once` and `run` log and ignore (exec mode passes them on to its program instead),
# because their default action would end the agent without a log line.
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

# Set by the early SIGHUP handler of `run`, so that `run` reloads once its reloader exists.
_early_reload: list[int] = []

if TYPE_CHECKING:
    from agent.declarations import Declarations
    from agent.reload import ConfigReloader
    from agent.settings import Settings
    from agent.sync import Syncer

logger = logging.getLogger("agent.cli")


class _StopRequested(BaseException):
    """Raised in the main thread by a stop signal during startup, `check` or `once` (a
    BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows
    it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _handle_startup_signals(*, reload_on_hup: bool) -> None:
    """Install the handlers that apply until a mode installs its own, before any slow import.

    SIGUSR1 and SIGUSR2 are ignored (logging is not configured yet, so without a log line).
    SIGTERM, SIGINT and SIGHUP stop the agent at once with 128 + N. SIGHUP for `run` is the
    exception: it is recorded, and `run` reloads its declarations once it is running.
    """
    for number in IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_IGN)

    def stop_at_once(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP and reload_on_hup:
            _early_reload.append(signum)
            return
        raise _StopRequested(signum)

    for number in ONCE_STOP_SIGNALS:
        signal.signal(number, stop_at_once)


def _handle_late_signals() -> None:
    """Ignore stop signals that arrive after the mode returned.

    The exit code is already decided, and an exception would interrupt the interpreter's shutdown.
    """
    for number in ONCE_STOP_SIGNALS:
        signal.signal(number, lambda signum, frame: None)


# The settings the flags of `check`, `once` and `run` set. Each flag is named after its setting
# (`--output-dir` sets `output_dir`), which `SECRETS_AGENT_OUTPUT_DIR` sets too.
SETTING_FLAGS = (
    "config",
    "output_dir",
    "refs_dir",
    "listen",
    "file_mode",
    "file_uid",
    "file_gid",
    "nested_keys",
    "timeout",
    "lease_revoke_grace",
    "lease_renewal_threshold",
    "revoke_on_exit",
    "log_level",
    "log_format",
    "notify_delay",
    "notify_signal",
    "exec_on_change",
    "exec_signal",
    "exec_stop_timeout",
    "watch_config",
)
_VARIABLE_PREFIX = "SECRETS_AGENT_"


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser that takes only whole flag names.

    argparse would otherwise read `--conf` as `--config`, so a flag added later could change
    what an existing command line means. Subcommand parsers are created with this class too.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="secrets-agent",
        description="Deliver secrets from AWS SSM, AWS Secrets Manager and Vault to files.",
    )
    parser.add_argument("--version", action="version", version=f"secrets-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("check", "validate the declarations without fetching anything; exit 0 or 2"),
        ("once", "fetch and write every target once, then exit (init container)"),
        ("run", "write every target and keep it current until stopped (sidecar)"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        # Lets `main` report an unknown flag with this command's usage, not the top-level one.
        command.set_defaults(command_parser=command)
        _add_declaration_flags(command)
        if name == "check":
            _add_check_flags(command)
            continue
        _add_writing_flags(command)
        if name == "once":
            _add_once_flags(command)
        else:
            _add_run_flags(command)
            command.usage = "secrets-agent run [options] [-- COMMAND [ARG ...]]"
            command.epilog = (
                "exec mode: with -- COMMAND, the agent starts COMMAND after the first complete "
                "write, signals or restarts it after changes, and exits with its exit status"
            )
    from agent.controller.cli import add_commands  # imports neither kopf nor a backend

    add_commands(commands)
    return parser


def _add_setting_flag(parser: argparse.ArgumentParser, flag: str, **options: object) -> None:
    """Add a flag that sets the setting of the same name, naming its variable in the help."""
    variable = _VARIABLE_PREFIX + flag.removeprefix("--").replace("-", "_").upper()
    options["help"] = f"{options['help']} ({variable})"
    parser.add_argument(flag, **options)  # type: ignore[arg-type]


def _add_declaration_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of every command: where the declarations are, how they are read, logging."""
    flag = parser.add_argument
    flag(
        "--config",
        action="append",
        metavar="PATH",
        help="declaration file or directory; repeatable (SECRETS_AGENT_CONFIG, comma-separated)",
    )
    _add_setting_flag(
        parser,
        "--nested-keys",
        action="store_const",
        const=True,
        help="allow secret keys with '/', written as subdirectories; default off",
    )
    _add_setting_flag(
        parser,
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="minimum level of the log lines written: debug, info, warning or error; default info",
    )
    _add_setting_flag(
        parser,
        "--log-format",
        type=str.lower,
        choices=["text", "json"],
        help="log lines as key=value text or as one JSON object each, default text",
    )


def _add_check_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        action="store_true",
        help="check the manifests as the controller reads them from the Kubernetes API: "
        "ClusterSecretStore conditions are accepted, the apiVersion must be "
        "secrets-agent.io/v1alpha1, secret keys may not contain '/', and references to stores "
        "in other files are not checked; default: as the agent in a pod reads them",
    )


def _add_writing_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `once` and `run`: where files go, how they are written, leases."""
    setting = _add_setting_flag
    setting(
        parser,
        "--output-dir",
        metavar="DIR",
        help="directory holding one subdirectory per target, default "
        "/var/run/secrets-agent/secrets",
    )
    setting(
        parser,
        "--refs-dir",
        metavar="DIR",
        help="where referenced Secrets are mounted as <name>/<key>, default "
        "/var/run/secrets-agent/refs",
    )
    setting(parser, "--file-mode", metavar="OCTAL", help="mode of written files, default 0400")
    setting(
        parser,
        "--file-uid",
        type=int,
        metavar="UID",
        help="owner of written files, default the agent's user",
    )
    setting(
        parser,
        "--file-gid",
        type=int,
        metavar="GID",
        help="group of written files, default the agent's group",
    )
    setting(
        parser,
        "--lease-revoke-grace",
        type=float,
        metavar="SECONDS",
        help="keep replaced dynamic credentials valid this long after the new ones are written, "
        "then revoke them; default 60",
    )
    setting(
        parser,
        "--lease-renewal-threshold",
        type=float,
        metavar="FRACTION",
        help="fetch a non-renewable dynamic secret again after this fraction of its TTL "
        "(±0.05), default 0.9",
    )
    setting(
        parser,
        "--revoke-on-exit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="at exit, revoke the dynamic secrets' leases and the Vault tokens that created "
        "them instead of handing them to the next agent; default off",
    )


def _add_once_flags(parser: argparse.ArgumentParser) -> None:
    _add_setting_flag(
        parser,
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long transient errors are retried before giving up, default 60",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `run`: the HTTP endpoints, reloading, notify targets and exec mode."""
    setting = _add_setting_flag
    setting(
        parser,
        "--listen",
        metavar="HOST:PORT",
        help="address of /livez, /readyz and /metrics, default 0.0.0.0:8741",
    )
    setting(
        parser,
        "--watch-config",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reload the declarations when their files change; default on",
    )
    setting(
        parser,
        "--notify-delay",
        type=float,
        metavar="SECONDS",
        help="changes within this many seconds reach a notify target together, default 2",
    )
    setting(
        parser,
        "--notify-signal",
        metavar="PROCESS[:SIGNAL]",
        help="signal the process with this name after a change, default signal SIGHUP",
    )
    setting(
        parser,
        "--exec-on-change",
        choices=["restart", "signal", "none"],
        help="exec mode: what a change does to COMMAND, default restart",
    )
    setting(
        parser,
        "--exec-signal",
        metavar="SIGNAL",
        help="exec mode: signal sent on change, default SIGHUP",
    )
    setting(
        parser,
        "--exec-stop-timeout",
        type=float,
        metavar="SECONDS",
        help="exec mode: wait after SIGTERM before SIGKILL, default 10",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` without `-- COMMAND`; exec mode passes SIGHUP on to its program instead.
    _handle_startup_signals(reload_on_hup=argv[:1] == ["run"] and "--" not in argv)
    try:
        return _main(argv)
    except _StopRequested as stop:
        # A stop signal before the mode installed its own handlers: stop at once, as the
        # default action would, but with a message and without a traceback.
        name = signal.Signals(stop.signum).name
        print(f"secrets-agent: stopped by {name} before startup finished", file=sys.stderr)
        return 128 + stop.signum
    finally:
        _handle_late_signals()


def _main(argv: list[str]) -> int:
    # Everything after the first `--` is exec mode's command, whatever it looks like.
    command = argv[argv.index("--") + 1 :] if "--" in argv else None
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    arguments, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(arguments, "command_parser", parser).error(
            "unrecognized arguments: " + " ".join(unknown)
        )
    if arguments.command in ("controller", "crds"):
        from agent.controller.cli import main as controller_main

        return controller_main(arguments)
    problem = _command_problem(arguments.command, command)
    if problem is not None:
        print(f"secrets-agent: {problem}", file=sys.stderr)
        return EXIT_INVALID
    # The cyclic garbage collector's passes over the objects that imports create, which live as
    # long as the process, took about 100 ms of the CPU time of `once`, at startup and in the
    # last collection at exit. So it stays off until the first sync round starts, and
    # `_startup_done` then takes those objects out of its view for good.
    gc.disable()
    try:
        return _agent_main(arguments, command)
    finally:
        gc.enable()


def _agent_main(arguments: argparse.Namespace, command: list[str] | None) -> int:
    """Load the settings and declarations, then run `check`, `once` or `run`."""
    try:
        from agent.settings import load_settings

        # A command has only the flags it uses; the others stay unset, as if not given.
        flags = {name: getattr(arguments, name, None) for name in SETTING_FLAGS}
        settings = load_settings(**flags)
    except SettingsError as error:
        print(f"secrets-agent: {error}", file=sys.stderr)
        return EXIT_INVALID
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    from agent.settings import unknown_variables

    for variable in unknown_variables():
        log_event(
            logger,
            logging.WARNING,
            "setting_unknown",
            variable=variable,
            fix="check the spelling; the README lists every SECRETS_AGENT_* variable",
        )

    if arguments.command == "check" and arguments.controller:
        return _check_controller(settings)
    try:
        from agent.declarations import load_declarations

        declarations = load_declarations(settings.config, allow_nested=settings.nested_keys)
    except DeclarationErrors as error:
        _report(arguments.command, settings, "declarations_invalid", error)
        return EXIT_INVALID
    if not declarations.external_secrets:
        problem = AgentError(
            "no ExternalSecret is declared in "
            + ", ".join(str(p) for p in settings.config)
            + "; without one the application would start without its secrets, so check the "
            "--config paths"
        )
        _report(arguments.command, settings, "declarations_empty", problem)
        return EXIT_INVALID

    if arguments.command == "check":
        print(
            f"ok: {len(declarations.stores)} store(s), "
            f"{len(declarations.external_secrets)} ExternalSecret(s), "
            f"{len(declarations.notify_targets)} NotifyTarget(s)"
        )
        return EXIT_OK
    if not settings.output_dir.is_dir():
        # In a pod the output directory is the shared volume's mount point, so a missing one
        # is a typo that would put secrets on the container's own filesystem.
        state = "is not a directory" if settings.output_dir.exists() else "does not exist"
        problem = AgentError(
            f"output directory {settings.output_dir} {state}; mount the shared "
            "in-memory volume there or fix --output-dir (SECRETS_AGENT_OUTPUT_DIR)"
        )
        _report(arguments.command, settings, "output_dir_missing", problem)
        return EXIT_INVALID
    if arguments.command == "once":
        return _once(settings, declarations)
    return _run(settings, declarations, command=command)


def _check_controller(settings: Settings) -> int:
    """Run `check --controller`: validate each manifest as the controller reads it."""
    from agent.declarations import (
        ExternalSecretDeclaration,
        StoreDeclaration,
        load_controller_manifests,
    )

    try:
        objects = load_controller_manifests(settings.config)
    except DeclarationErrors as error:
        _report("check", settings, "declarations_invalid", error)
        return EXIT_INVALID
    stores = sum(isinstance(item, StoreDeclaration) for item in objects)
    external_secrets = sum(isinstance(item, ExternalSecretDeclaration) for item in objects)
    generators = len(objects) - stores - external_secrets
    print(
        f"ok: {stores} store(s), {external_secrets} ExternalSecret(s), "
        f"{generators} VaultDynamicSecret(s), as the controller reads them"
    )
    return EXIT_OK


def _startup_done() -> None:
    """Turn the garbage collector back on, without the objects that exist at this point.

    They are mostly modules, classes and declarations that live as long as the process, so
    later collections, and the interpreter's last one at exit, skip them (gc.freeze). The price
    is the cyclic garbage made so far, which is never freed: about 1,000 objects in `once` with
    120 keys. Call it right before the first sync round.
    """
    gc.freeze()
    gc.enable()


def _report(command: str, settings: Settings, event: str, error: AgentError) -> None:
    """Show an error that stops the agent: as plain text for a person running `check` or the
    text log format, as one structured event per problem for the JSON log format."""
    if command == "check" or settings.log_format == "text":
        print(f"secrets-agent: {_printable(str(error))}", file=sys.stderr)
        return
    problems = error.errors if isinstance(error, DeclarationErrors) else [error]
    for problem in problems:
        log_event(logger, logging.ERROR, event, error=str(problem))


def _printable(text: str) -> str:
    """Escape control characters except newlines between problems, so that a remote key or
    file name holding a newline cannot forge a log line."""
    return "\n".join(
        "".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in text.split("\n")
    )


def _command_problem(subcommand: str, command: list[str] | None) -> str | None:
    """Return why `-- COMMAND` cannot be used with `subcommand`, or None."""
    if command is None:
        return None
    if subcommand != "run":
        return (
            f"{subcommand} does not start a program; use `secrets-agent run ... -- COMMAND` "
            "(exec mode), or an init container followed by the application container"
        )
    if not command:
        return "nothing follows --; write the program to start, e.g. `-- java -jar app.jar`"
    return None


def _build(settings: Settings, declarations: Declarations) -> Syncer:
    from agent.leases import LeaseManager
    from agent.metrics import Metrics
    from agent.sync import Syncer
    from agent.writer import Writer

    metrics = Metrics()
    writer = Writer(
        settings.output_dir, ownership=settings.ownership, allow_nested=settings.nested_keys
    )
    syncer = Syncer(declarations, settings=settings, writer=writer, metrics=metrics)
    LeaseManager.attach(syncer, settings=settings)
    return syncer


def _ignore_signals() -> None:
    def log_ignored(signum: int, frame: FrameType | None) -> None:
        log_event(logger, logging.INFO, "signal_ignored", signal=signal.Signals(signum).name)

    for number in IGNORED_SIGNALS:
        signal.signal(number, log_ignored)


def _once(settings: Settings, declarations: Declarations) -> int:
    """Run `once`, stopping early and cleanly on SIGTERM, SIGINT or SIGHUP."""
    stopping: list[int] = []
    syncers: list[Syncer] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Only the first signal interrupts; a second one must not interrupt the cleanup.
        if not stopping:
            stopping.append(signum)
            raise _StopRequested(signum)

    for number in ONCE_STOP_SIGNALS:
        signal.signal(number, request_stop)
    _ignore_signals()
    try:
        return _sync_once(settings, declarations, syncers)
    except _StopRequested as stop:
        # NOTE: a signal that arrives after `_sync_once` returned but before this frame exits
        # (a few bytecodes) raises _StopRequested out of here, and `main` reports it as a stop
        # during startup.
        exit_code = 128 + stop.signum
        log_event(
            logger,
            logging.WARNING,
            "once_interrupted",
            signal=signal.Signals(stop.signum).name,
            exit_code=exit_code,
        )
        if syncers:
            # The round's threads are daemons, so the process exits without waiting for them.
            syncers[0].abandon_in_flight()
            _close_within(STOP_SECONDS, syncers[0])
        return exit_code


def _sync_once(settings: Settings, declarations: Declarations, syncers: list[Syncer]) -> int:
    try:
        syncer = _build(settings, declarations)
    except AgentError as error:
        print(f"secrets-agent: {error}", file=sys.stderr)
        return EXIT_FAILED
    syncers.append(syncer)
    _startup_done()
    try:
        result = syncer.run_once(timeout=settings.timeout)
    except BaseException as error:
        # After a stop signal `_once` closes the stores within a deadline instead.
        if not isinstance(error, _StopRequested):
            _close(syncer, settings)
        raise
    _close(syncer, settings)
    written = len(result.changed) + len(result.unchanged)
    if result.failed:
        for target, error in result.failed.items():
            text = _gave_up(error, settings.timeout)
            _report(
                "once",
                settings,
                "target_not_written",
                AgentError(f"target {target} not written: {text}"),
            )
        log_event(logger, logging.ERROR, "once_failed", written=written, failed=len(result.failed))
        return EXIT_FAILED
    log_event(logger, logging.INFO, "once_done", targets=written, changed=len(result.changed))
    return EXIT_OK


# The promise of a retry in a transient error's fix, which `once` no longer keeps once it gives up.
_RETRY_PROMISE = re.compile(r"the agent retries(?: with backoff)?; |;? ?the agent retries\b")


def _gave_up(error: AgentError, timeout: float) -> str:
    """Return the text of a failure `once` gave up on, without the promise of a retry that a
    transient store error's fix makes (those lines are also logged while retries go on)."""
    if not getattr(error, "transient", False):
        return str(error)
    text = _RETRY_PROMISE.sub("", str(error))
    return f"{text}; once gave up after retrying for up to {timeout:g} s (--timeout) and exits"


def _run(
    settings: Settings, declarations: Declarations, *, command: list[str] | None = None
) -> int:
    from agent.endpoints import HealthServer
    from agent.notify import build_notifier
    from agent.reload import start_reloader
    from agent.supervisor import build_supervisor

    try:
        syncer = _build(settings, declarations)
        server = HealthServer(
            settings.listen_address, readiness=syncer.readiness, registry=syncer.metrics.registry
        )
        notifier = build_notifier(settings, syncer)
    except AgentError as error:
        log_event(logger, logging.ERROR, "agent_start_failed", error=str(error))
        return EXIT_FAILED
    except OSError as error:
        log_event(
            logger,
            logging.ERROR,
            "agent_start_failed",
            listen=settings.listen,
            error=f"cannot listen on {settings.listen}: {error.strerror or error}",
            fix="set --listen (SECRETS_AGENT_LISTEN) to a free host:port",
        )
        return EXIT_FAILED
    supervisor = build_supervisor(settings, command) if command else None

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log_event(logger, logging.INFO, "agent_stopping", signal=signal.Signals(signum).name)
        syncer.request_stop()
        if supervisor is not None:
            supervisor.request_stop(signum)
        stop.set()

    def program_exited() -> None:
        syncer.request_stop()
        stop.set()

    reloaders: list[ConfigReloader] = []

    def request_reload(signum: int, frame: FrameType | None) -> None:
        log_event(logger, logging.INFO, "reload_requested", signal=signal.Signals(signum).name)
        for reloader in reloaders:
            reloader.request_reload()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    _ignore_signals()
    # Exec mode passes SIGHUP, SIGUSR1 and SIGUSR2 on to the program instead (docs/exec.md).
    if supervisor is not None:
        supervisor.forward_signals()
        supervisor.attach(syncer, on_exit=program_exited)
    server.start()
    host, port = server.address
    log_event(
        logger,
        logging.INFO,
        "agent_started",
        mode="run",
        targets=len(syncer.states),
        listen=f"{host}:{port}",
    )
    crashed: list[BaseException] = []

    def keep_in_sync() -> None:
        try:
            syncer.run_forever()
        except Exception as error:  # a defect, not a store failure: stop instead of hanging
            crashed.append(error)
            log_event(
                logger, logging.CRITICAL, "agent_crashed", error=f"{type(error).__name__}: {error}"
            )
        finally:
            stop.set()

    loop = threading.Thread(target=keep_in_sync, name="sync", daemon=True)
    _startup_done()
    loop.start()
    reloader = start_reloader(settings, apply=syncer.replace_declarations, current=declarations)
    reloaders.append(reloader)
    if _early_reload:
        # SIGHUP arrived while `run` was starting, so the declarations may predate the change.
        request_reload(_early_reload[0], None)
    stop.wait()  # signal handlers still run while the main thread waits here
    reloader.stop()
    status = supervisor.wait() if supervisor is not None else EXIT_OK
    notifier.close()
    server.stop()
    _finish_within(STOP_SECONDS, loop, syncer)
    log_event(logger, logging.INFO, "agent_stopped", exit_code=EXIT_FAILED if crashed else status)
    return EXIT_FAILED if crashed else status


def _finish_within(seconds: float, loop: threading.Thread, syncer: Syncer) -> None:
    """Let the sync loop finish its round and close the stores (revoking Vault tokens), but
    exit after `seconds` whatever is still in flight. Files stay consistent either way: an
    interrupted projection leaves only a temporary directory that the next start removes."""
    deadline = time.monotonic() + seconds
    loop.join(timeout=seconds)
    if loop.is_alive():
        # The loop and its fetch workers are daemon threads, so they end with the process.
        syncer.abandon_in_flight()
        log_event(logger, logging.WARNING, "agent_stop_forced", step="sync round")
        return
    _close_within(max(0.0, deadline - time.monotonic()), syncer)


def _close_within(seconds: float, syncer: Syncer) -> None:
    """Close the stores (see `_close`), but give up after `seconds`.

    A store that never responds must not keep a stopping agent alive.
    """
    closer = threading.Thread(
        target=_close, args=(syncer, syncer.settings), name="close-stores", daemon=True
    )
    closer.start()
    closer.join(timeout=seconds)
    if closer.is_alive():
        log_event(logger, logging.WARNING, "agent_stop_forced", step="close stores")


def _close(syncer: Syncer, settings: Settings) -> None:
    """Hand the dynamic secrets' leases to the next agent (or revoke them), then close stores."""
    from agent.leases import LeaseManager

    if isinstance(syncer.leases, LeaseManager):
        syncer.leases.close(revoke=settings.revoke_on_exit)
    syncer.stores.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
