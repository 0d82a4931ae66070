"""Config reload: watch the declaration files and apply each valid new version without a restart.

`ConfigReloader` watches every `--config` path with watchdog (inotify on Linux) and, after a
burst of changes has been quiet for a short window, loads the declarations again with
`load_declarations`. A valid new set goes to `Syncer.replace_declarations`, which adds, updates
and removes targets and stores at the next turn of the sync loop. An invalid one is rejected
with one `declarations_rejected` log line that lists every problem, and the running set stays.

What is watched, and why:
- A file is watched through its parent directory, because editors replace a file by renaming a
  new one over it, and a watch on the file itself would follow the old inode.
- A directory is watched itself (its `*.yaml`, `*.yml`, `*.json` and `..` entries) and through
  its parent, so that deleting and creating it again is seen and the watch is set up again.
- A mounted ConfigMap switches all its files with one rename of `..data_tmp` over `..data`.
  Events are matched on those names, never on the event type, because the switch can appear
  as a create, a move or a modification depending on the platform.
- A path whose directory does not exist yet is watched through its nearest existing ancestor.

`request_reload` asks for a reload whatever the files did; `run` calls it on SIGHUP, as Vault
Agent and many daemons reload on that signal. With `watch=False` (`--no-watch-config`) nothing is
watched, and only `request_reload` reloads.

Guarantees: the watcher thread reads only declaration files. It never uses a store or the
writer, and hands new declarations to the sync thread through `replace_declarations`. Without
inotify (not built in, or out of instances or watches) it falls back to watchdog's polling
observer, every `poll_interval` seconds, and logs `config_watch_polling`. It never polls in a
tight loop, because events it causes itself (opening and reading files) are not subscribed to.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from agent.declarations import DECLARATION_SUFFIXES, Declarations, load_declarations
from agent.errors import DeclarationErrors
from agent.logs import log_event

if TYPE_CHECKING:
    from agent.settings import Settings

logger = logging.getLogger("agent.reload")

# A ConfigMap switch or an editor's save is a few events within milliseconds, so a short quiet
# window catches the whole burst. A steady stream of changes still reloads every MAX_DELAY.
DEBOUNCE_SECONDS = 0.5
MAX_DELAY_SECONDS = 5.0
POLL_INTERVAL_SECONDS = 2.0
# The kubelet's names in a mounted ConfigMap: `..data` points to the current generation and
# `..data_tmp` is the link renamed over it.
KUBELET_LINKS = frozenset({"..data", "..data_tmp"})
# Opening, reading and closing without writing are left out, so the reloader's own reads of
# the declarations cause no events. Directory modifications are left out too, because every
# change inside a directory also arrives as an event naming the entry.
_WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
]
# inotify errors that mean "no inotify here": out of instances or watches, or not built in.
_NO_INOTIFY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOSYS, errno.ENOMEM})


@dataclass(frozen=True)
class _Watch:
    """A directory being watched and the identity (device, inode) it had when the watch began."""

    path: str
    identity: tuple[int, int]


class ConfigReloader:
    """Watches the declaration paths and applies each valid new version of the declarations.

    `apply` receives every new valid `Declarations` that differs from the last one applied. For
    the agent it is `Syncer.replace_declarations`, and it must be safe to call from any thread.
    `current` is the set running now, loaded from `paths` as given: they are loaded again as
    given, because each declaration records its file name and a relative path made absolute would
    make every declaration look changed. `start` begins watching, unless `watch` is False;
    `stop` ends it.
    `observer_class` is watchdog's native observer for the platform unless a test replaces it.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        *,
        apply: Callable[[Declarations], None],
        current: Declarations,
        allow_nested: bool = False,
        debounce: float = DEBOUNCE_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        use_polling: bool = False,
        observer_class: Callable[[], BaseObserver] = Observer,
        watch: bool = True,
    ) -> None:
        self.load_paths = [Path(path) for path in paths]
        self.paths = [Path(os.path.abspath(path)) for path in paths]
        self.watch = watch
        self.apply = apply
        self.allow_nested = allow_nested
        self.debounce = debounce
        self.max_delay = max(max_delay, debounce)
        self.poll_interval = poll_interval
        self.polling = use_polling
        self._observer_class = observer_class
        # Counters for tests and debugging: loads attempted, new sets applied, sets rejected.
        self.loads = 0
        self.applied = 0
        self.rejected = 0
        self._current = current
        self._followed = _followed_paths(self.paths)
        self._condition = threading.Condition()
        self._first_event: float | None = None
        self._last_event = 0.0
        self._requested = False
        self._stopping = False
        self._observer: BaseObserver | None = None
        self._watches: dict[str, tuple[_Watch, ObservedWatch]] = {}
        self._handler = _Handler(self)
        self._thread = threading.Thread(target=self._run, name="config-reload", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin watching and reloading; returns once the watches are in place."""
        if not self.watch:
            self._thread.start()
            return
        self._observer = self._new_observer()
        self._observer.start()
        self._arm()
        self._thread.start()
        # A change made after the caller loaded the declarations but before the watches were in
        # place sent no event, so compare the files once now.
        self._note_change()
        log_event(
            logger,
            logging.INFO,
            "config_watch_started",
            paths=",".join(str(path) for path in self.paths),
            watches=len(self._watches),
            mode="polling" if self.polling else "events",
        )

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; a reload in progress finishes, but nothing new is applied after it."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._observer is not None and self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout)

    def _new_observer(self) -> BaseObserver:
        if self.polling:
            return PollingObserver(timeout=self.poll_interval)
        observer = self._observer_class()
        if isinstance(observer, PollingObserver):
            self._use_polling("no native file system events on this platform")
            return PollingObserver(timeout=self.poll_interval)
        return observer

    def _use_polling(self, reason: str) -> None:
        self.polling = True
        log_event(
            logger,
            logging.WARNING,
            "config_watch_polling",
            reason=reason,
            interval_s=self.poll_interval,
        )

    # --- events ---------------------------------------------------------------------------------

    def on_event(self, event: FileSystemEvent) -> None:
        """Note a file system event; called in watchdog's thread, so it only records the time."""
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if not any(path and self._concerns(os.fsdecode(path)) for path in paths):
            return
        self._note_change()

    def request_reload(self) -> None:
        """Load the declarations again after the debounce window, even when no file event came.

        Safe in a signal handler: it only records the request and wakes the reload thread.
        """
        with self._condition:
            self._requested = True
        self._note_change()

    def _note_change(self) -> None:
        now = time.monotonic()
        with self._condition:
            if self._first_event is None:
                self._first_event = now
            self._last_event = now
            self._condition.notify_all()

    def _concerns(self, event_path: str) -> bool:
        """True when an event at `event_path` can change what the declaration paths contain."""
        path = Path(event_path)
        return any(_concerns(path, followed) for followed in self._followed)

    # --- the reload thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while self._wait_for_quiet():
            try:
                if self.watch:
                    self._arm()
                self._reload()
            except Exception as error:  # a defect must not end reloading for the pod's life
                log_event(
                    logger,
                    logging.ERROR,
                    "config_reload_failed",
                    error=f"{type(error).__name__}: {error}",
                )

    def _wait_for_quiet(self) -> bool:
        """Wait for events, then until they have been quiet for `debounce` seconds or
        `max_delay` has passed since the first; return False when stopping."""
        with self._condition:
            while self._first_event is None and not self._stopping:
                self._condition.wait()
            while not self._stopping:
                assert self._first_event is not None
                wake = min(self._last_event + self.debounce, self._first_event + self.max_delay)
                remaining = wake - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            self._first_event = None
            return not self._stopping

    def _reload(self) -> None:
        self.loads += 1
        with self._condition:
            requested, self._requested = self._requested, False
        try:
            declarations = load_declarations(self.load_paths, allow_nested=self.allow_nested)
        except DeclarationErrors as error:
            self._reject([str(problem) for problem in error.errors])
            return
        if not declarations.external_secrets:
            # As at start: an emptied ConfigMap is far more likely a mistake than a wish to stop
            # refreshing every target.
            self._reject(
                [
                    "no ExternalSecret is declared in "
                    + ", ".join(str(path) for path in self.paths)
                    + "; the running declarations stay until one is"
                ]
            )
            return
        if declarations == self._current:
            # A file event that changed nothing is routine. A requested reload (SIGHUP) is
            # logged at info, so that the operator who sent the signal sees its result.
            level = logging.INFO if requested else logging.DEBUG
            log_event(logger, level, "declarations_unchanged")
            return
        with self._condition:
            if self._stopping:
                return
        log_event(
            logger,
            logging.INFO,
            "declarations_reloaded",
            stores=len(declarations.stores),
            external_secrets=len(declarations.external_secrets),
        )
        self.apply(declarations)
        self._current = declarations
        self.applied += 1

    def _reject(self, problems: list[str]) -> None:
        self.rejected += 1
        log_event(
            logger,
            logging.ERROR,
            "declarations_rejected",
            errors=len(problems),
            kept_targets=len(self._current.external_secrets),
            problems="\n".join(problems),
        )

    # --- watches --------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Watch the directories the declaration paths need now; drop watches on directories
        that are gone or were replaced (a new inode needs a new watch)."""
        assert self._observer is not None
        wanted = _directories_to_watch(self._followed)
        for path, (watch, observed) in list(self._watches.items()):
            if wanted.get(path) != watch.identity:
                self._observer.unschedule(observed)
                del self._watches[path]
        for path, identity in wanted.items():
            if path in self._watches:
                continue
            try:
                observed = self._observer.schedule(
                    self._handler, path, recursive=False, event_filter=_WATCHED_EVENTS
                )
            except OSError as error:
                if error.errno in _NO_INOTIFY and not self.polling:
                    self._switch_to_polling(f"inotify unavailable: {error.strerror or error}")
                    return
                # Gone again or unreadable: a later event on its parent arms it.
                log_event(
                    logger,
                    logging.WARNING,
                    "config_watch_failed",
                    path=path,
                    error=error.strerror or str(error),
                )
                continue
            self._watches[path] = (_Watch(path, identity), observed)

    def _switch_to_polling(self, reason: str) -> None:
        assert self._observer is not None
        self._use_polling(reason)
        self._observer.stop()
        self._watches.clear()
        self._observer = PollingObserver(timeout=self.poll_interval)
        self._observer.start()
        self._arm()


def start_reloader(
    settings: Settings, *, apply: Callable[[Declarations], None], current: Declarations
) -> ConfigReloader:
    """Start reloading the declarations of `settings`: on file changes unless `watch_config` is
    off, and on `request_reload` (SIGHUP) always.

    When watching cannot start at all, this logs `config_watch_failed` and returns a reloader
    that reloads only on request: the agent then runs on with the declarations it has.
    """
    options = {"apply": apply, "current": current, "allow_nested": settings.nested_keys}
    reloader = ConfigReloader(settings.config, watch=settings.watch_config, **options)
    try:
        reloader.start()
    except OSError as error:
        reloader.stop()
        log_event(
            logger,
            logging.ERROR,
            "config_watch_failed",
            path=",".join(str(path) for path in settings.config),
            error=error.strerror or str(error),
        )
        reloader = ConfigReloader(settings.config, watch=False, **options)
        reloader.start()
    return reloader


class _Handler(FileSystemEventHandler):
    def __init__(self, reloader: ConfigReloader) -> None:
        self.reloader = reloader

    def dispatch(self, event: FileSystemEvent) -> None:
        self.reloader.on_event(event)


def _concerns(path: Path, followed: Path) -> bool:
    """True when an event at `path` can change what the declaration path `followed` contains."""
    if path == followed:
        return True
    if path.parent == followed:
        # An entry of a declaration directory: a file that is read, or a kubelet entry.
        return path.suffix in DECLARATION_SUFFIXES or path.name.startswith("..")
    if path.parent == followed.parent and path.name in KUBELET_LINKS:
        return True  # a ConfigMap switch in the directory of a declaration file
    # A directory on the way to the declaration path appeared, went or moved.
    return followed.is_relative_to(path)


def _followed_paths(paths: Sequence[Path]) -> list[Path]:
    """Return the paths whose changes matter: each declaration path and, when it is a link to
    somewhere else, its target (but not a target inside a ConfigMap's hidden generation
    directory, which the `..data` switch covers)."""
    followed: list[Path] = []
    for path in paths:
        followed.append(path)
        try:
            resolved = path.resolve(strict=True)
        except OSError:
            continue
        if resolved != path and not any(part.startswith("..") for part in resolved.parts):
            followed.append(resolved)
    return list(dict.fromkeys(followed))


def _directories_to_watch(followed: Sequence[Path]) -> dict[str, tuple[int, int]]:
    """Map each directory to watch to its current (device, inode)."""
    wanted: dict[str, tuple[int, int]] = {}
    for path in followed:
        candidates = [path, *path.parents]
        # The path itself when it is a directory, then the nearest existing directory above it.
        for index, candidate in enumerate(candidates):
            try:
                status = candidate.stat()
            except OSError:
                continue
            if index == 0 and not stat.S_ISDIR(status.st_mode):
                continue
            wanted[str(candidate)] = (status.st_dev, status.st_ino)
            if index > 0:
                break
    return wanted
