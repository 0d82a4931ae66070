"""The lease state file: which leases an agent holds, so that the next agent can adopt them.

An init container (`once`) issues dynamic secrets and exits. The sidecar (`run`) that starts next
reads this file and keeps those leases instead of issuing new credentials. A restarted
sidecar does the same with its predecessor's leases.

The file is `<output dir>/..secrets-agent-leases.json`. Names starting with `..` are reserved
for the agent, so no target can take this name.

Guarantees:
- It never contains a secret value or a token. It holds lease ids, generator names and spec
  digests, targets, the secret key names each field of a response was written to, times, and
  the expiry of the token each lease depends on. The values are recovered from the target's
  current generation.
- Mode 0600: the file is created with mode 0600 and O_EXCL under a temporary name in the output
  directory, written, fsynced, renamed over the final name, and the directory is fsynced. A
  reader sees the old file or the new one, never a part.
- No symbolic link is ever followed: every call works relative to a descriptor of the output
  directory, opened once by its real path. A link planted at the file's name is replaced by the
  rename, never written through. Reading opens with O_NOFOLLOW, so a planted link reads as
  "no state".
- Reading accepts only a regular file owned by the agent's user, with no permission bits for
  group or others, at most 1 MiB, holding the expected JSON. Anything else is reported as
  `LeaseStateError` and the caller starts without adopted leases.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

STATE_FILE_NAME = "..secrets-agent-leases.json"
_TEMPORARY_PREFIX = "..secrets-agent-leases.tmp."
FORMAT_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LeaseStateError(Exception):
    """The state file exists but cannot be used. The message gives the reason, never content."""


@dataclass(frozen=True)
class LeaseRecord:
    """One lease as the state file keeps it. Times are Unix seconds.

    `entry` is the index of the `dataFrom` entry that names the generator, `secret_keys` maps
    each field of the response to the secret key it was written to (empty until written).
    `token_expires_at` is when the token that created the lease expires unless it is renewed,
    None when it never does. `superseded` leases wait for revocation at `revoke_at`.
    """

    target: str
    entry: int
    generator: str
    fingerprint: str
    path: str
    kind: Literal["lease", "token", "ttl"]
    lease_id: str = field(repr=False)
    issued_at: float
    renewed_at: float
    expires_at: float
    duration: float
    renewable: bool
    capped: bool
    token_expires_at: float | None
    secret_keys: dict[str, str]
    superseded: bool = False
    revoke_at: float | None = None


class _RecordModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    target: str = Field(min_length=1)
    entry: int = Field(ge=0)
    generator: str = Field(min_length=1)
    fingerprint: str
    path: str
    kind: Literal["lease", "token", "ttl"]
    lease_id: str
    issued_at: float
    renewed_at: float
    expires_at: float
    duration: float = Field(ge=0)
    renewable: bool
    capped: bool
    token_expires_at: float | None
    secret_keys: dict[str, str]
    superseded: bool
    revoke_at: float | None


class _StateModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    version: Literal[1]
    written_at: float
    leases: list[_RecordModel]


def read_state(directory: Path) -> list[LeaseRecord]:
    """Return the records of the state file in `directory`; [] when there is none.

    Raises LeaseStateError when a file (or link, or anything else) is there but unusable.
    """
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise LeaseStateError(f"cannot open {directory}: {error.strerror}") from None
    try:
        content = _read_regular_file(directory_fd)
    finally:
        os.close(directory_fd)
    if content is None:
        return []
    try:
        document = _StateModel.model_validate(json.loads(content))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LeaseStateError("not JSON") from None
    except ValidationError as error:
        raise LeaseStateError(f"unexpected content ({error.error_count()} problems)") from None
    return [LeaseRecord(**record.model_dump()) for record in document.leases]


def _read_regular_file(directory_fd: int) -> bytes | None:
    try:
        fd = os.open(STATE_FILE_NAME, _READ_FLAGS, dir_fd=directory_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        # ELOOP: a symbolic link was planted at the name; it is never followed.
        raise LeaseStateError(f"cannot open the state file: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise LeaseStateError("the state file is not a regular file")
        if status.st_uid != os.geteuid():
            raise LeaseStateError("the state file belongs to another user")
        if status.st_mode & 0o077:
            raise LeaseStateError("the state file is readable or writable by group or others")
        if status.st_size > MAX_STATE_BYTES:
            raise LeaseStateError(f"the state file is larger than {MAX_STATE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read(MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)


def write_state(directory: Path, records: Sequence[LeaseRecord], *, now: float) -> None:
    """Replace the state file in `directory` with `records`, atomically; raise OSError.

    Leftover temporary files of an interrupted write are removed first.
    """
    document = {
        "version": FORMAT_VERSION,
        "written_at": now,
        "leases": [asdict(record) for record in records],
    }
    content = json.dumps(document, indent=1, sort_keys=True).encode()
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_leftovers(directory_fd)
        temporary = _TEMPORARY_PREFIX + secrets.token_hex(8)
        fd = os.open(temporary, _CREATE_FLAGS, 0o600, dir_fd=directory_fd)
        try:
            try:
                os.fchmod(fd, 0o600)  # the umask cannot widen it, but make the mode exact
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, STATE_FILE_NAME, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        except BaseException:
            _unlink_quietly(directory_fd, temporary)
            raise
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _remove_leftovers(directory_fd: int) -> None:
    for name in os.listdir(directory_fd):
        if name.startswith(_TEMPORARY_PREFIX):
            _unlink_quietly(directory_fd, name)  # unlink never follows a link


def _unlink_quietly(directory_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=directory_fd)
    except OSError:
        pass
