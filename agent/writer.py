"""Projection of snapshots into files with the kubelet's atomic generation scheme.

One target is the directory `<output dir>/<target>/`, laid out as the kubelet lays out a
Secret volume:

    ..2025_01_31_12_00_00.3f9c0a1b2d/   generation directory with the files (mode 0755)
    ..data -> ..2025_01_31_12_00_00.3f9c0a1b2d
    db-password -> ..data/db-password   one visible link per secret key
    tls -> ..data/tls                   nested secret key `tls/key.pem` gets a link to `tls` only

Names starting with `..` are reserved for the writer.

What the writer guarantees:
- Readers see one whole snapshot per generation. Files are written and fsynced in a new
  generation directory, and a single rename(2) of `..data_tmp` over `..data` switches to it.
  The target directory is fsynced after the switch.
- No file is ever readable more broadly than configured, even for an instant and whatever the
  umask: each file is created with O_EXCL|O_NOFOLLOW and mode 0, then gets its owner (fchown)
  and mode (fchmod) on the open descriptor before a byte is written, all before the switch.
- The directory is shared with the application, so everything below the output directory is
  treated as hostile. Every call works relative to a directory descriptor and never follows a
  symbolic link. The writer writes only files it has just created with O_EXCL. It opens
  other files only to read them, and only regular files inside the generation directory that
  `..data` points to, with O_NOFOLLOW|O_NONBLOCK. Planted links or files at the names the
  writer uses (visible names, `..data`, `..data_tmp`) are replaced. Each replacement is logged
  as a `planted_entry_replaced` warning, except at `..data_tmp`, which may be the writer's own
  crash leftover. Other planted entries are ignored, and a planted directory where a link
  belongs is an error naming it. Apart from creating the target directory, nothing outside it
  is written or removed.
- A snapshot equal to the current generation (same secret keys, bytes, mode and owner) creates
  no generation and changes no mtime. Missing or wrong visible links are still repaired, as the
  kubelet does after a restart halfway through a write.
- A failed projection leaves the previous generation current and removes its own temporary
  generation directory. Leftovers of a crash (`..data_tmp`, `..link_tmp.*`, generation
  directories that `..data` does not point to, links of removed keys) are removed by the
  first projection of the target in a new process, and by the one after a failed projection.
  Between those, a projection removes only the entries this Writer recorded as its own.
- A superseded generation stays on disk for a grace period (1 s by default) and is removed by
  the first projection after that, changed or not, or by `remove_superseded`, whatever was
  planted in it. A removal that fails, for example because entries keep appearing in the
  directory, is tried again after 1 s, then after twice as long each time, up to 5 min.
  Unlike the kubelet, which removes it at once, the grace lets a reader whose path lookup read
  the old `..data` a moment before the switch still open its file. With immediate removal, a
  reader of a visible name preempted during its lookup got ENOENT (5 times in about 69,000
  reads during 10,000 back-to-back switches on 2 loaded CPUs, in
  tests/writer/test_writer_concurrent_readers.py). A grace of 0 restores the kubelet's
  behaviour.

What it does not guarantee:
- Concurrent writers on one target. Callers serialise writes per target. The per-target lock
  of a Writer covers the threads of one process only.
- A reader that opens two visible names one after the other may get them from two
  generations. To read a consistent set, resolve `..data` once and open every file through
  that generation directory.
- A reader that stays inside a superseded generation longer than the grace period gets
  ENOENT and must resolve `..data` again. Old contents, including those of removed secret
  keys, stay in the hidden superseded generation until it is removed.
- A new secret key is in `..data` a moment before its visible link exists, and the link of a
  removed key dangles for a moment after the switch.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import AgentError
from agent.logs import log_event

log = logging.getLogger(__name__)

DATA_LINK = "..data"
DATA_TMP_LINK = "..data_tmp"
LINK_TMP_PREFIX = "..link_tmp."
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
GENERATION_DIR_MODE = 0o755

_GENERATION_NAME = re.compile(r"\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.[0-9A-Za-z]{1,64}")
_LINK_TMP_NAME = re.compile(r"\.\.link_tmp\.[0-9a-f]{1,64}")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown(2)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK so that opening a FIFO planted in a generation returns at once; fstat rejects it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# errno values meaning "something was planted or removed under us", not an I/O failure.
_FOREIGN_ERRNOS = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR})
# Removing a generation: how often to try again at once when entries keep appearing in it, and
# the backoff of later attempts (1 s, 2 s, 4 s ... up to 5 min) while it still fails.
_REMOVAL_ATTEMPTS = 5
_REMOVAL_RETRY_MAX_SECONDS = 300.0
# Deeper trees are not removed; one descriptor and two stack frames are used per level.
_MAX_REMOVAL_DEPTH = 200


class ProjectionError(AgentError):
    """A projection step failed; the message names the target, the path, the step and the fix.

    The message never contains file contents, so it may be logged as it is.
    """

    def __init__(
        self,
        problem: str,
        *,
        target: str | None,
        step: str,
        path: Path | str | None = None,
        fix: str = "",
    ) -> None:
        self.problem = problem
        self.target = target
        self.step = step
        self.path = None if path is None else str(path)
        self.fix = fix
        text = f"target {target}: " if target else ""
        text += f"{step} {self.path} failed" if self.path else f"{step} failed"
        text += f": {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


@dataclass(frozen=True)
class FileOwnership:
    """Mode and optional owner given to every projected file.

    `uid` or `gid` None leaves that id as the file system assigns it: the writer's effective
    uid, and the writer's effective gid unless the target directory has the set-group-ID bit.
    Give a `gid` and a mode with group bits (0o440) to let that group read the files.

    NOTE: the owner is part of "unchanged content". With `uid` unset, files an init container
    wrote under another uid differ from what the sidecar would write, so the sidecar switches
    in a new generation at start. Set `uid` (and `gid`) when the two run as different users.
    """

    mode: int = 0o400
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.mode <= 0o777:
            raise ValueError(f"file mode {self.mode:#o} is invalid; use permission bits only")
        for label, value in (("uid", self.uid), ("gid", self.gid)):
            if value is not None and not 0 <= value <= _MAX_ID:
                raise ValueError(f"file {label} {value} is invalid; use 0 to {_MAX_ID}")


class GenerationContents(Mapping[str, bytes]):
    """Files of one generation (secret key to bytes), with the generation's name and ownership.

    `ownership` has the actual mode, uid and gid of the files, or is None when the files differ
    or there are none.
    """

    def __init__(
        self, *, name: str, files: dict[str, bytes], ownership: FileOwnership | None
    ) -> None:
        self.name = name
        self.ownership = ownership
        self._files = files

    def __getitem__(self, key: str) -> bytes:
        return self._files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        # Keys and sizes only: the contents are secret values.
        return f"GenerationContents(name={self.name!r}, keys={sorted(self._files)!r})"


def check_secret_key(name: str, *, allow_nested: bool = False) -> str | None:
    """Return None when `name` is safe as a secret key (a file name), else the reason it is not.

    A safe secret key is a plain file name: not empty, not `.` or `..`, not starting with `..`
    (reserved for the writer), and no `/`. It contains no NUL or other control character
    (U+0000-U+001F, U+007F-U+009F), no whitespace at its start or end, and at most 255 bytes
    in UTF-8. A name such as `.hidden` is allowed. With `allow_nested`, `/` separates path
    segments that each follow those rules, the whole path is at most 4096 bytes, and it may not
    be absolute. The reason never repeats the name, so the caller decides how to quote it, for
    example `f"secret key {name!r} {reason}"`.
    """
    if not isinstance(name, str):
        return "is not a string"
    if name == "":
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if "/" not in name:
        return _check_segment(name)
    if not allow_nested:
        return "contains '/' and nested keys are off"
    if name.startswith("/"):
        return "is an absolute path"
    if len(encoded) > MAX_PATH_BYTES:
        return f"is {len(encoded)} bytes in UTF-8; the maximum for a nested key is {MAX_PATH_BYTES}"
    for number, segment in enumerate(name.split("/"), start=1):
        reason = _check_segment(segment)
        if reason is not None:
            return f"has path segment {number} that {reason}"
    return None


def _check_segment(segment: str) -> str | None:
    if segment == "":
        return "is empty"
    if segment in (".", ".."):
        return f"is {segment!r}"
    if segment.startswith(".."):
        return "starts with '..', which is reserved for the writer"
    control = next((c for c in segment if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        # Line breaks and tabs in file names break tools and log lines that list them.
        return f"contains the control character U+{ord(control):04X}"
    if segment != segment.strip():
        return "starts or ends with whitespace"
    size = len(segment.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes in UTF-8; the maximum is {MAX_NAME_BYTES}"
    return None


@dataclass(frozen=True)
class _Target:
    """An open target directory. `path` is for messages only; system calls use `fd`."""

    name: str
    path: Path
    fd: int

    def error(self, problem: str, *, step: str, name: str | None, fix: str) -> ProjectionError:
        path = self.path if name is None else self.path / name
        return ProjectionError(problem, target=self.name, step=step, path=path, fix=fix)

    def step(self, step: str, name: str | None, *, fix: str) -> _Step:
        """Return a context that turns an OSError raised inside it into a ProjectionError."""
        return _Step(self, step, name, fix)


class _Step:
    # A class rather than contextlib.contextmanager: a projection enters one per group of
    # system calls, and under cProfile the generator-based form took about a quarter of the time.
    __slots__ = ("found", "step", "name", "fix")

    def __init__(self, found: _Target, step: str, name: str | None, fix: str) -> None:
        self.found = found
        self.step = step
        self.name = name
        self.fix = fix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, OSError):
            problem = error.strerror or type(error).__name__
            raise self.found.error(problem, step=self.step, name=self.name, fix=self.fix) from error


_FIX_VOLUME = "check that the volume is mounted writable and has free space"
_FIX_RESERVED = "remove it, because names starting with '..' are reserved for the writer"
_FIX_LINK_NAME = "remove the directory, because the visible link of a secret key goes there"


@dataclass
class _TargetState:
    """State one Writer keeps per target between projections."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # Generations this Writer superseded, with the time.monotonic() of the switch. After a
    # failed removal the time is moved so that the generation expires at its next attempt.
    superseded: dict[str, float] = field(default_factory=dict)
    # Failed removals so far, per generation still on disk, for the retry backoff.
    removal_failures: dict[str, int] = field(default_factory=dict)
    # Visible names of the last complete projection. None until a projection completed in
    # this process, and after a failed one, so that the next cleanup scans the directory.
    visible: set[str] | None = None


class Writer:
    """Projects snapshots into `<output dir>/<target>/`; see the module docstring for guarantees.

    The output directory is resolved once, here, with os.path.realpath: the operator chose it
    (it may be a symbolic link to the mount point) and the application cannot replace a mount
    point. Nothing below it is ever followed. It is created with mode 0755 when missing.
    Callers serialise projections of one target; the per-target lock covers one process only.

    `old_generation_grace_seconds` is how long a superseded generation stays before a
    projection removes it. Generations this Writer did not supersede itself (crash leftovers,
    or those of an init container) count as expired.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        ownership: FileOwnership = FileOwnership(),
        allow_nested: bool = False,
        old_generation_grace_seconds: float = 1.0,
    ) -> None:
        if old_generation_grace_seconds < 0:
            raise ValueError("old_generation_grace_seconds must be 0 or more")
        self.output_dir = Path(os.path.realpath(output_dir))
        self.ownership = ownership
        self.allow_nested = allow_nested
        self.old_generation_grace_seconds = old_generation_grace_seconds
        self._states: dict[str, _TargetState] = {}
        self._states_guard = threading.Lock()
        self._create_output_dir()

    def project(
        self,
        target: str,
        files: Mapping[str, bytes],
        *,
        ownership: FileOwnership | None = None,
    ) -> bool:
        """Make `files` the current generation of `target`; return True when one was switched in.

        Returns False, without creating a generation, when the current one already contains exactly
        these secret keys with the same bytes, mode and owner. Visible links are repaired anyway.
        Raises ProjectionError when a secret key is unsafe or a step fails. When it raises before
        the switch, the previous generation is still current and no temporary entry remains.
        A directory planted at a visible name during the projection makes it raise after the
        switch: the new generation is then current, and that one link stays missing until the
        directory is removed and a later projection repairs it.
        """
        ownership = self.ownership if ownership is None else ownership
        top_names = self._check_snapshot(target, files)

        state = self._state_for(target)
        with state.lock, self._open_target(target, create=True) as found:
            assert found is not None  # create=True never returns None
            try:
                return self._project_locked(found, state, files, ownership, top_names)
            except BaseException:
                state.visible = None  # the next cleanup scans the whole directory
                raise

    def read(self, target: str) -> GenerationContents | None:
        """Return the current generation's files, or None when the target has no complete one.

        A sidecar calls this at start to adopt what an init container wrote. "Not complete"
        covers: no target directory, no `..data` link, a link not pointing to a generation
        directory, or a generation holding anything the writer does not create (a symbolic
        link, a FIFO, a `..` name). Such entries are never followed or opened.
        """
        self._check_target_name(target)
        with self._open_target(target, create=False) as found:
            if found is None:
                return None
            current = _current_generation(found)
            if current is None:
                return None
            return _read_generation(found, current)

    def generation(self, target: str) -> str | None:
        """Return the name of the current generation directory of `target`, or None.

        Checks that `..data` points to a real directory with a generation name, but not what
        the directory contains; read() checks that too.
        """
        self._check_target_name(target)
        with self._open_target(target, create=False) as found:
            return None if found is None else _current_generation(found)

    def remove_superseded(self) -> float | None:
        """Remove superseded generations whose grace period has passed, in every target.

        Returns the seconds until the next kept generation expires, or None when none is kept.
        The sync loop calls this on that schedule, so old values leave the volume soon after a
        switch even when no later projection of the target comes. A failed removal is logged,
        and tried again after a backoff (1 s, doubling up to 5 min) until it succeeds.
        """
        grace = self.old_generation_grace_seconds
        next_expiry: float | None = None
        with self._states_guard:
            targets = list(self._states.items())
        for target, state in targets:
            if not state.superseded:
                continue
            with state.lock, self._open_target(target, create=False) as found:
                if found is None:
                    state.superseded.clear()
                    state.removal_failures.clear()
                    continue
                now = time.monotonic()
                expired = [name for name, at in state.superseded.items() if at + grace <= now]
                self._remove_expired(found, state, expired)
                now = time.monotonic()
                for superseded_at in state.superseded.values():
                    remaining = max(superseded_at + grace - now, 0.0)
                    if next_expiry is None or remaining < next_expiry:
                        next_expiry = remaining
        return next_expiry

    def _remove_expired(self, found: _Target, state: _TargetState, generations: list[str]) -> None:
        """Remove expired superseded generations; schedule another attempt for each failure."""
        for generation in sorted(generations):
            if _remove_generation(found, generation):
                state.superseded.pop(generation, None)
                state.removal_failures.pop(generation, None)
            else:
                self._schedule_removal_retry(state, generation)

    def _schedule_removal_retry(self, state: _TargetState, generation: str) -> None:
        failures = state.removal_failures.get(generation, 0) + 1
        state.removal_failures[generation] = failures
        delay = min(2.0 ** (failures - 1), _REMOVAL_RETRY_MAX_SECONDS)
        # A generation expires at superseded_at + grace, so this makes it due after `delay`.
        state.superseded[generation] = time.monotonic() + delay - self.old_generation_grace_seconds

    def _create_output_dir(self) -> None:
        fix = "set the output directory to a writable path, usually the shared volume's mount"
        try:
            os.makedirs(self.output_dir, mode=GENERATION_DIR_MODE)
        except FileExistsError:
            pass
        except OSError as err:
            problem = err.strerror or type(err).__name__
            raise ProjectionError(
                problem, target=None, step="create output directory", path=self.output_dir, fix=fix
            ) from err
        else:
            # makedirs applies the umask; readers with another uid must traverse it.
            os.chmod(self.output_dir, GENERATION_DIR_MODE)
        if not self.output_dir.is_dir():
            raise ProjectionError(
                "not a directory",
                target=None,
                step="open output directory",
                path=self.output_dir,
                fix=fix,
            )

    def _project_locked(
        self,
        found: _Target,
        state: _TargetState,
        files: Mapping[str, bytes],
        ownership: FileOwnership,
        top_names: list[str],
    ) -> bool:
        current = _current_generation(found)
        planted_data = _planted_data_link(found) if current is None else None
        attributes = _expected_attributes(found, ownership)
        links = _plan_links(found, top_names)
        if current is not None and _generation_matches(found, current, files, attributes):
            if links:
                _create_links(found, links)
                with found.step("sync target directory", None, fix=_FIX_VOLUME):
                    os.fsync(found.fd)
            self._clean_up(found, state, current=current, top_names=top_names)
            return False

        started = time.monotonic()
        generation = _build_generation(found, files, ownership)
        _switch(found, generation)
        if planted_data is not None:
            _log_planted_entry(found, DATA_LINK, planted_data)
        if current is not None:
            state.superseded[current] = time.monotonic()
        _create_links(found, links)
        with found.step("sync target directory", None, fix=_FIX_VOLUME):
            os.fsync(found.fd)
        self._clean_up(found, state, current=generation, top_names=top_names)
        log_event(
            log,
            logging.DEBUG,
            "projection_switched",
            target=found.name,
            keys=len(files),
            generation=generation,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return True

    def _clean_up(
        self, found: _Target, state: _TargetState, *, current: str, top_names: list[str]
    ) -> None:
        """Remove expired superseded generations and the links of removed secret keys.

        The whole directory is scanned only when this Writer has no complete projection of the
        target behind it, so that the cost of a projection does not grow with the number of
        generations kept for their grace period.
        """
        expired_before = time.monotonic() - self.old_generation_grace_seconds
        expired = {name for name, at in state.superseded.items() if at <= expired_before}
        if state.visible is None:
            recent = set(state.superseded) - expired
            failed = _remove_leftovers(found, keep={current, *recent}, top_names=top_names)
            for generation in expired - failed:
                state.superseded.pop(generation, None)
                state.removal_failures.pop(generation, None)
            for generation in sorted(failed):
                self._schedule_removal_retry(state, generation)
        else:
            self._remove_expired(found, state, sorted(expired))
            for name in sorted(state.visible.difference(top_names)):
                _remove_own_link(found, name)
        state.superseded.pop(current, None)
        state.removal_failures.pop(current, None)
        state.visible = set(top_names)

    def _state_for(self, target: str) -> _TargetState:
        with self._states_guard:
            return self._states.setdefault(target, _TargetState())

    def _check_target_name(self, target: str) -> None:
        reason = check_secret_key(target)
        if reason is not None:
            raise ProjectionError(
                f"target name {target!r} {reason}",
                target=None,
                step="check target name",
                fix="use a plain directory name such as payment-secrets",
            )

    def _check_snapshot(self, target: str, files: Mapping[str, bytes]) -> list[str]:
        """Validate the target name and secret keys; return the visible names, sorted."""
        self._check_target_name(target)

        def fail(problem: str, fix: str) -> ProjectionError:
            return ProjectionError(problem, target=target, step="check snapshot", fix=fix)

        for key, value in files.items():
            reason = check_secret_key(key, allow_nested=self.allow_nested)
            if reason is not None:
                fix = "rename the secret key in the declaration"
                if "/" in key and not self.allow_nested:
                    fix += ", or turn on nested keys (--nested-keys)"
                raise fail(f"secret key {key!r} {reason}", fix)
            if not isinstance(value, bytes):
                raise fail(
                    f"value of secret key {key!r} is {type(value).__name__}, not bytes",
                    "encode the value before projecting it",
                )

        for key in files:
            segments = key.split("/")
            for depth in range(1, len(segments)):
                parent = "/".join(segments[:depth])
                if parent in files:
                    raise fail(
                        f"secret key {parent!r} is a file but {key!r} needs it as a directory",
                        "rename one of the two secret keys",
                    )
        return sorted({key.split("/", 1)[0] for key in files})

    @contextmanager
    def _open_target(self, target: str, *, create: bool) -> Iterator[_Target | None]:
        """Open the target directory without following links.

        Yields None when the directory is missing and `create` is false.
        """
        base = _Target(name=target, path=self.output_dir, fd=-1)
        with base.step("open output directory", None, fix="check the output directory setting"):
            output_fd = os.open(self.output_dir, _DIR_FLAGS)
        try:
            found = _open_target_dir(base, output_fd, create=create)
        finally:
            os.close(output_fd)
        if found is None:
            yield None
            return
        try:
            yield found
        finally:
            os.close(found.fd)


def _open_target_dir(base: _Target, output_fd: int, *, create: bool) -> _Target | None:
    name = base.name
    created = False
    if create:
        with base.step("create target directory", name, fix=_FIX_VOLUME):
            try:
                os.mkdir(name, GENERATION_DIR_MODE, dir_fd=output_fd)
                created = True
            except FileExistsError:
                pass

    with base.step("inspect target directory", name, fix=_FIX_VOLUME):
        try:
            found = os.stat(name, dir_fd=output_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    if stat.S_ISLNK(found.st_mode):
        raise base.error(
            "it is a symbolic link, and the writer never writes through links",
            step="open target directory",
            name=name,
            fix="remove the link, because the writer creates the directory itself",
        )
    if not stat.S_ISDIR(found.st_mode):
        raise base.error(
            "it is not a directory",
            step="open target directory",
            name=name,
            fix="remove it, because the writer creates the directory itself",
        )

    # O_NOFOLLOW closes the race of a link swapped in after the stat above.
    with base.step("open target directory", name, fix="remove whatever replaced the directory"):
        fd = os.open(name, _DIR_FLAGS, dir_fd=output_fd)
    if created:
        # mkdir applies the umask; readers with another uid must traverse the directory.
        with base.step("set mode of target directory", name, fix=_FIX_VOLUME):
            os.fchmod(fd, GENERATION_DIR_MODE)
    return _Target(name=name, path=base.path / name, fd=fd)


def _current_generation(found: _Target) -> str | None:
    """Return the generation directory `..data` points to, if it is a real one of ours."""
    with found.step("read link", DATA_LINK, fix=_FIX_VOLUME):
        try:
            pointed = os.readlink(DATA_LINK, dir_fd=found.fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.EINVAL:  # a planted file or directory, not a link
                return None
            raise
    if not _GENERATION_NAME.fullmatch(pointed):
        return None
    with found.step("inspect generation", pointed, fix=_FIX_VOLUME):
        try:
            status = os.stat(pointed, dir_fd=found.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
    return pointed if stat.S_ISDIR(status.st_mode) else None


@dataclass(frozen=True)
class _Attributes:
    mode: int
    uid: int
    gid: int

    def match(self, status: os.stat_result) -> bool:
        return (
            stat.S_IMODE(status.st_mode) == self.mode
            and status.st_uid == self.uid
            and status.st_gid == self.gid
        )


def _expected_attributes(found: _Target, ownership: FileOwnership) -> _Attributes:
    """Return the mode and ids a file written now with `ownership` would get."""
    uid = os.geteuid() if ownership.uid is None else ownership.uid
    gid = ownership.gid
    if gid is None:
        # A set-group-ID directory passes its group to new entries (and its bit to subdirectories).
        directory = os.fstat(found.fd)
        gid = directory.st_gid if directory.st_mode & stat.S_ISGID else os.getegid()
    return _Attributes(mode=ownership.mode, uid=uid, gid=gid)


class _ForeignEntry(Exception):
    """A generation contains an entry the writer does not create; internal to this module.

    `key` is its path inside the generation and `kind` its file type, as `_file_type` names it.
    """

    def __init__(self, key: str, kind: str) -> None:
        super().__init__(key)
        self.key = key
        self.kind = kind


def _entry_kind(entry: os.DirEntry[str]) -> str:
    try:
        return _file_type(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        return "unknown"


def _walk_files(generation_fd: int) -> Iterator[tuple[str, int, str]]:
    """Yield (secret key, directory fd, file name) for each file of a generation.

    Raises _ForeignEntry at the first entry the writer would not have created. Subdirectories
    are opened with O_NOFOLLOW, one descriptor per level, so a planted link is never followed.
    The entry type comes from the listing; _read_file checks it again on the open descriptor.
    """
    stack: list[tuple[str, int, Iterator[os.DirEntry[str]]]] = []

    def descend(prefix: str, fd: int) -> None:
        try:
            with os.scandir(fd) as listing:
                entries = list(listing)
        except BaseException:
            os.close(fd)
            raise
        stack.append((prefix, fd, iter(entries)))

    descend("", os.dup(generation_fd))
    try:
        while stack:
            prefix, dir_fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                os.close(dir_fd)
                continue
            key = prefix + entry.name
            if entry.name.startswith(".."):
                raise _ForeignEntry(key, _entry_kind(entry))
            try:
                size = len(key.encode("utf-8"))
            except UnicodeEncodeError:  # os.scandir decodes invalid bytes to surrogates
                raise _ForeignEntry(key, _entry_kind(entry)) from None
            if size > MAX_PATH_BYTES:
                raise _ForeignEntry(key, _entry_kind(entry))
            if entry.is_dir(follow_symlinks=False):
                descend(key + "/", os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd))
            elif entry.is_file(follow_symlinks=False):
                yield key, dir_fd, entry.name
            else:
                raise _ForeignEntry(key, _entry_kind(entry))
    finally:
        for _, fd, _ in stack:
            os.close(fd)


def _read_file(
    dir_fd: int, name: str, *, expected_size: int | None = None
) -> tuple[bytes | None, os.stat_result]:
    """Read a file without following a link or blocking on a FIFO; _ForeignEntry if not regular.

    Returns None in place of the contents, without reading, when the size is not
    `expected_size`.
    """
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _ForeignEntry(name, _file_type(status.st_mode))
        if expected_size is not None and status.st_size != expected_size:
            return None, status
        # A short read of a regular file means end of file, so one read usually suffices.
        request_size = status.st_size + 1
        chunks = [os.read(fd, request_size)]
        while len(chunks[-1]) == request_size:
            request_size = 65536
            chunks.append(os.read(fd, request_size))
        return b"".join(chunks), status
    finally:
        os.close(fd)


def _generation_matches(
    found: _Target, generation: str, files: Mapping[str, bytes], attributes: _Attributes
) -> bool:
    """Return True when `generation` contains exactly `files`, with the expected mode and owner.

    After a difference the walk goes on without reading files, so that an entry planted in the
    generation (a link, a FIFO, a `..` name) is still logged: the new generation replaces it.
    """
    with found.step("read current generation", generation, fix=_FIX_VOLUME):
        try:
            generation_fd = os.open(generation, _DIR_FLAGS, dir_fd=found.fd)
        except OSError as err:
            if err.errno in _FOREIGN_ERRNOS:
                return False
            raise
        try:
            matches = True
            seen = 0
            with closing(_walk_files(generation_fd)) as walk:
                for key, dir_fd, name in walk:
                    expected = files.get(key) if matches else None
                    if expected is None:
                        matches = False
                        continue
                    content, opened = _read_file(dir_fd, name, expected_size=len(expected))
                    if content != expected or not attributes.match(opened):
                        matches = False
                        continue
                    seen += 1
            return matches and seen == len(files)
        except _ForeignEntry as foreign:
            _log_planted_entry(found, f"{generation}/{foreign.key}", foreign.kind)
            return False
        except OSError as err:
            if err.errno in _FOREIGN_ERRNOS:
                return False
            raise
        finally:
            os.close(generation_fd)


def _read_generation(found: _Target, generation: str) -> GenerationContents | None:
    with found.step("read current generation", generation, fix=_FIX_VOLUME):
        try:
            generation_fd = os.open(generation, _DIR_FLAGS, dir_fd=found.fd)
        except OSError as err:
            if err.errno in _FOREIGN_ERRNOS:
                return None
            raise
        try:
            files: dict[str, bytes] = {}
            owners: set[tuple[int, int, int]] = set()
            with closing(_walk_files(generation_fd)) as walk:
                for key, dir_fd, name in walk:
                    content, opened = _read_file(dir_fd, name)
                    assert content is not None  # always read without an expected size
                    files[key] = content
                    owners.add((stat.S_IMODE(opened.st_mode), opened.st_uid, opened.st_gid))
        except _ForeignEntry:
            return None
        except OSError as err:
            if err.errno in _FOREIGN_ERRNOS:
                return None
            raise
        finally:
            os.close(generation_fd)

    ownership = None
    if len(owners) == 1:
        mode, uid, gid = owners.pop()
        ownership = FileOwnership(mode=mode, uid=uid, gid=gid)
    return GenerationContents(name=generation, files=files, ownership=ownership)


def _plan_links(found: _Target, top_names: list[str]) -> dict[str, str | None]:
    """Return the visible names whose link is missing or wrong, each with the type found there.

    The type is None for a missing name. Raises when a directory sits where `..data` or a link
    belongs. Checking before anything is built keeps the previous generation current with its
    links intact. A directory planted after this check makes _create_links fail instead.
    """
    with found.step("inspect", DATA_LINK, fix=_FIX_VOLUME):
        data_status = _lstat_or_none(found, DATA_LINK)
    if data_status is not None and stat.S_ISDIR(data_status.st_mode):
        raise found.error(
            "a directory is in the way", step="check link name", name=DATA_LINK, fix=_FIX_RESERVED
        )

    plan: dict[str, str | None] = {}
    for name in top_names:
        with found.step("inspect visible link", name, fix=_FIX_VOLUME):
            try:
                # One system call for the usual case, a link that is already right.
                if os.readlink(name, dir_fd=found.fd) != f"{DATA_LINK}/{name}":
                    plan[name] = "symlink"
                continue
            except FileNotFoundError:
                plan[name] = None
                continue
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: the entry is not a link
                    raise
            status = _lstat_or_none(found, name)
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise found.error(
                "a directory is in the way", step="check link name", name=name, fix=_FIX_LINK_NAME
            )
        plan[name] = None if status is None else _file_type(status.st_mode)
    return plan


def _planted_data_link(found: _Target) -> str | None:
    """Return the file type of a `..data` entry that points to no generation, or None."""
    with found.step("inspect", DATA_LINK, fix=_FIX_VOLUME):
        status = _lstat_or_none(found, DATA_LINK)
    return None if status is None else _file_type(status.st_mode)


def _lstat_or_none(found: _Target, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=found.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _new_generation_name() -> str:
    # UTC, so names sort by time whatever the container's time zone.
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    return f"..{stamp}.{secrets.token_hex(5)}"


def _build_generation(found: _Target, files: Mapping[str, bytes], ownership: FileOwnership) -> str:
    """Create a generation directory holding `files`, all fsynced; return its name.

    On failure the directory is removed before the error propagates.
    """
    with found.step("create generation directory", None, fix=_FIX_VOLUME):
        while True:
            generation = _new_generation_name()
            try:
                os.mkdir(generation, 0o700, dir_fd=found.fd)
                break
            except FileExistsError:
                continue
    try:
        with found.step("open generation directory", generation, fix=_FIX_VOLUME):
            generation_fd = os.open(generation, _DIR_FLAGS, dir_fd=found.fd)
    except BaseException:
        _remove_generation(found, generation)
        raise

    try:
        _write_files(found, generation, generation_fd, files, ownership)
        with found.step("sync generation directory", generation, fix=_FIX_VOLUME):
            os.fchmod(generation_fd, GENERATION_DIR_MODE)
            os.fsync(generation_fd)
    except BaseException:
        os.close(generation_fd)
        _remove_generation(found, generation)
        raise
    os.close(generation_fd)
    return generation


def _write_files(
    found: _Target,
    generation: str,
    generation_fd: int,
    files: Mapping[str, bytes],
    ownership: FileOwnership,
) -> None:
    """Write every file into the generation, creating subdirectories for nested secret keys.

    Keys are taken in sorted order, so all keys below one directory come one after the other
    and `open_dirs` holds only the descriptors of the current path (one per level).
    """
    open_dirs: list[tuple[str, int]] = []

    def close_down_to(depth: int) -> None:
        while len(open_dirs) > depth:
            segment, fd = open_dirs.pop()
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    try:
        for key in sorted(files):
            *parents, leaf = key.split("/")
            common = 0
            while common < min(len(open_dirs), len(parents)):
                if open_dirs[common][0] != parents[common]:
                    break
                common += 1
            with found.step("sync directory", f"{generation}/{key}", fix=_FIX_VOLUME):
                close_down_to(common)
            for depth in range(common, len(parents)):
                parent_fd = open_dirs[-1][1] if open_dirs else generation_fd
                relative = f"{generation}/{'/'.join(parents[: depth + 1])}"
                with found.step("create directory", relative, fix=_FIX_VOLUME):
                    os.mkdir(parents[depth], 0o700, dir_fd=parent_fd)
                    fd = os.open(parents[depth], _DIR_FLAGS, dir_fd=parent_fd)
                    open_dirs.append((parents[depth], fd))
                    os.fchmod(fd, GENERATION_DIR_MODE)
            parent_fd = open_dirs[-1][1] if open_dirs else generation_fd
            _write_file(found, f"{generation}/{key}", parent_fd, leaf, files[key], ownership)
        with found.step("sync directory", generation, fix=_FIX_VOLUME):
            close_down_to(0)
    finally:
        for _, fd in open_dirs:
            os.close(fd)


def _write_file(
    found: _Target,
    relative: str,
    dir_fd: int,
    name: str,
    content: bytes,
    ownership: FileOwnership,
) -> None:
    # The file is created with mode 0 and gets its owner before its mode. At no instant can a
    # user outside the configured owner and group read it, and the umask plays no part.
    with found.step("create file", relative, fix=_FIX_VOLUME):
        fd = os.open(name, _CREATE_FLAGS, 0, dir_fd=dir_fd)
    try:
        if ownership.uid is not None or ownership.gid is not None:
            uid = -1 if ownership.uid is None else ownership.uid
            gid = -1 if ownership.gid is None else ownership.gid
            fix = (
                "to set only the group, make the agent a member of it (in Kubernetes, set the "
                "pod's securityContext.fsGroup to that gid); to set another owner, run the agent "
                "as root or with CAP_CHOWN; or leave the file uid and gid unset"
            )
            with found.step("set owner of", relative, fix=fix):
                os.fchown(fd, uid, gid)
        with found.step("write file", relative, fix=_FIX_VOLUME):
            os.fchmod(fd, ownership.mode)
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
    finally:
        os.close(fd)


def _switch(found: _Target, generation: str) -> None:
    """Point `..data` at `generation` with one rename(2); remove `generation` if that fails."""
    try:
        _clear_data_tmp(found)
        with found.step("create link", DATA_TMP_LINK, fix=_FIX_VOLUME):
            os.symlink(generation, DATA_TMP_LINK, dir_fd=found.fd)
        try:
            fix = f"{_FIX_VOLUME}, and that {DATA_LINK} is not a directory"
            with found.step(f"rename {DATA_TMP_LINK} over", DATA_LINK, fix=fix):
                os.rename(DATA_TMP_LINK, DATA_LINK, src_dir_fd=found.fd, dst_dir_fd=found.fd)
        except BaseException:
            _unlink_quietly(found, DATA_TMP_LINK)
            raise
    except BaseException:
        _remove_generation(found, generation)
        raise


def _clear_data_tmp(found: _Target) -> None:
    """Remove a leftover `..data_tmp` entry; unlink(2) never follows it. A directory is an error."""
    with found.step("remove leftover", DATA_TMP_LINK, fix=_FIX_VOLUME):
        try:
            status = os.stat(DATA_TMP_LINK, dir_fd=found.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(status.st_mode):
            raise found.error(
                "a directory is in the way",
                step="create link",
                name=DATA_TMP_LINK,
                fix=_FIX_RESERVED,
            )
        os.unlink(DATA_TMP_LINK, dir_fd=found.fd)
        log_event(
            log, logging.INFO, "projection_leftover_removed", target=found.name, entry=DATA_TMP_LINK
        )


def _create_links(found: _Target, plan: Mapping[str, str | None]) -> None:
    """Make each planned visible name a link `name -> ..data/name`.

    Whatever is at the name is replaced atomically: a new link under a temporary `..` name is
    renamed over it, so a planted file or FIFO is never opened or written through. Replacing
    anything but a missing name is logged, because only the application can have put it there.
    """
    for name, replaced in plan.items():
        temporary = LINK_TMP_PREFIX + secrets.token_hex(8)
        with found.step("create visible link", name, fix=_FIX_LINK_NAME):
            os.symlink(f"{DATA_LINK}/{name}", temporary, dir_fd=found.fd)
            try:
                os.rename(temporary, name, src_dir_fd=found.fd, dst_dir_fd=found.fd)
            except BaseException:
                _unlink_quietly(found, temporary)
                raise
        if replaced is not None:
            _log_planted_entry(found, name, replaced)


def _log_planted_entry(found: _Target, entry: str, kind: str) -> None:
    """Log an entry the application planted at a name the writer uses, now replaced."""
    log_event(
        log, logging.WARNING, "planted_entry_replaced", target=found.name, entry=entry, kind=kind
    )


def _remove_leftovers(found: _Target, *, keep: set[str], top_names: list[str]) -> set[str]:
    """Scan the target directory and remove every entry the writer left behind.

    Only entries the writer creates are removed: real directories with a generation name not
    in `keep` (recursively, never following a link), `..data_tmp` and `..link_tmp.*` links,
    and visible links whose target is `..data/<own name>` for names not in `top_names`.
    Anything else the application put here stays. Failures are logged, not raised, because
    the projection itself already succeeded. Returns the generations that could not be removed.
    """
    visible = set(top_names)
    failed: set[str] = set()
    with found.step("list target directory", None, fix=_FIX_VOLUME):
        with os.scandir(found.fd) as listing:
            entries = list(listing)
    for entry in entries:
        name = entry.name
        if name in keep or name == DATA_LINK or name in visible:
            continue
        if not name.startswith(".."):
            if entry.is_symlink():
                _remove_own_link(found, name)
        elif _GENERATION_NAME.fullmatch(name) and entry.is_dir(follow_symlinks=False):
            if not _remove_generation(found, name):
                failed.add(name)
        elif entry.is_symlink() and (name == DATA_TMP_LINK or _LINK_TMP_NAME.fullmatch(name)):
            _unlink_quietly(found, name)
    return failed


def _remove_own_link(found: _Target, name: str) -> None:
    """Remove the visible link `name` if it is the writer's (`..data/<name>`), else leave it."""
    try:
        if os.readlink(name, dir_fd=found.fd) == f"{DATA_LINK}/{name}":
            os.unlink(name, dir_fd=found.fd)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: the application replaced it with a non-link
            _log_cleanup_failure(found, name, err)


def _remove_generation(found: _Target, generation: str) -> bool:
    """Remove a generation directory and everything in it, never following a link.

    Returns True when nothing of it is left, and False after logging a failure. An entry
    planted while the tree is emptied makes rmdir(2) fail with ENOTEMPTY, so the removal is
    tried again at once a few times. Something other than a directory at `generation` is not
    the writer's and is left alone.
    """
    for attempt in range(1, _REMOVAL_ATTEMPTS + 1):
        try:
            _remove_tree(found.fd, generation, depth=0)
            return True
        except FileNotFoundError:
            return True
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                return True  # replaced by a link or file, which the leftover scan leaves too
            if err.errno == errno.ENOTEMPTY and attempt < _REMOVAL_ATTEMPTS:
                continue
            _log_cleanup_failure(found, generation, err)
            return False
    return False  # not reached: the last attempt returns


def _remove_tree(parent_fd: int, name: str, *, depth: int) -> None:
    """Remove the directory `name` of `parent_fd` with its contents; raise OSError on failure.

    Directories are opened with O_DIRECTORY|O_NOFOLLOW|O_NONBLOCK, so a link or FIFO swapped in
    for one fails the open instead of being followed or blocking. shutil.rmtree opens them
    without O_NONBLOCK, and a FIFO swapped in after its type check would block it.
    """
    if depth > _MAX_REMOVAL_DEPTH:
        raise OSError(errno.ELOOP, f"more than {_MAX_REMOVAL_DEPTH} levels of directories")
    fd = os.open(name, _DIR_FLAGS | os.O_NONBLOCK, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as listing:
            names = [entry.name for entry in listing]
        for child in names:
            _remove_entry(fd, child, depth=depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_entry(dir_fd: int, name: str, *, depth: int) -> None:
    """Remove one entry of a directory being emptied, whatever its type; unlink(2) never follows."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:  # Linux unlink(2) returns EISDIR for a directory
        pass
    try:
        _remove_tree(dir_fd, name, depth=depth)
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        # The directory was swapped for a link or file after unlink(2) saw it: unlink that.
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def _log_cleanup_failure(found: _Target, name: str, err: OSError) -> None:
    log_event(
        log,
        logging.WARNING,
        "projection_cleanup_failed",
        target=found.name,
        entry=name,
        error=err.strerror or type(err).__name__,
    )


def _unlink_quietly(found: _Target, name: str) -> None:
    try:
        os.unlink(name, dir_fd=found.fd)
    except FileNotFoundError:
        pass
    except OSError as err:
        _log_cleanup_failure(found, name, err)


def _file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special"
