"""Resolution of Kubernetes references (`*SecretRef`, `caProvider`, `serviceAccountRef`) to files.

Inside a pod the agent has no Kubernetes API access: a referenced Secret is mounted as a volume at
`<refs dir>/<name>/<key>`, and a service account token at
`<refs dir>/serviceaccount/<name>/token`, or the pod's own token when no account is named. Files
are read again at every use, so a rotated projected token or Secret is picked up at the next login.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from agent.errors import StoreError
from agent.models import CAProvider, SecretKeySelector, ServiceAccountSelector

POD_SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
MAX_REFERENCE_BYTES = 1024 * 1024


class MissingReferenceError(StoreError):
    """A referenced Secret, ConfigMap or token is not mounted where the agent looks for it."""


class InvalidReferenceError(StoreError):
    """A referenced file was read, but its content cannot be sent as a credential."""


def require_one_line(text: str, *, store: str, field: str, location: str) -> str:
    """Return a credential read from a reference, or raise InvalidReferenceError when it holds a
    line break or another control character.

    Callers strip surrounding whitespace first, so one trailing newline (as `echo` or an editor
    writes) is accepted. A line break inside would make the HTTP library reject the request
    header. That failure looks like a network error and would be retried, so this check raises a
    permanent error before any request. The message names `location`, never the content.
    """
    if not any(_is_control(character) for character in text):
        return text
    if "\n" in text or "\r" in text:
        problem = f"{field}: {location} holds more than one line"
    else:
        problem = f"{field}: {location} contains a control character, such as a tab"
    raise InvalidReferenceError(
        problem,
        store=store,
        fix="the file must hold the credential on one line (one trailing newline is fine and "
        "is stripped); write it without line breaks",
    )


def _is_control(character: str) -> bool:
    """Return whether `character` is a C0 or C1 control character (Unicode category Cc)."""
    code = ord(character)
    return code < 0x20 or 0x7F <= code < 0xA0


class ReferenceResolver(Protocol):
    """What a store needs to read the Kubernetes objects its declaration references.

    `Refs` reads mounted files inside a pod; the controller reads through the Kubernetes API.
    Both raise MissingReferenceError (a StoreError) naming `field` when a reference cannot be
    read, and neither puts the content into a message.
    """

    def read_secret(
        self, selector: SecretKeySelector | CAProvider, *, store: str, field: str
    ) -> bytes: ...

    def read_token(
        self, selector: ServiceAccountSelector | None, *, store: str, field: str
    ) -> str: ...

    def secret_location(self, selector: SecretKeySelector | CAProvider) -> str:
        """Describe where a referenced key is read from, for messages."""
        ...

    def token_location(self, selector: ServiceAccountSelector | None) -> str:
        """Describe where a service account token is read from, for messages."""
        ...


class Refs:
    """Reads referenced Secrets, ConfigMaps and tokens from the files they are mounted as."""

    def __init__(self, refs_dir: Path, *, pod_token: Path = POD_SERVICE_ACCOUNT_TOKEN) -> None:
        self.refs_dir = refs_dir
        self.pod_token = pod_token

    def secret_path(self, selector: SecretKeySelector | CAProvider) -> Path:
        return self.refs_dir / selector.name / selector.key

    def token_path(self, selector: ServiceAccountSelector | None) -> Path:
        if selector is None:
            return self.pod_token
        return self.refs_dir / "serviceaccount" / selector.name / "token"

    def secret_location(self, selector: SecretKeySelector | CAProvider) -> str:
        return f"file {self.secret_path(selector)}"

    def token_location(self, selector: ServiceAccountSelector | None) -> str:
        return f"file {self.token_path(selector)}"

    def read_secret(
        self, selector: SecretKeySelector | CAProvider, *, store: str, field: str
    ) -> bytes:
        """Read the mounted key a selector names; raise MissingReferenceError naming the field."""
        _check_segment(selector.name, store=store, field=f"{field}.name")
        _check_segment(selector.key, store=store, field=f"{field}.key")
        path = self.secret_path(selector)
        kind = selector.type if isinstance(selector, CAProvider) else "Secret"
        fix = f"mount {kind} {selector.name} (key {selector.key}) at {path.parent}"
        _check_contained(path, self.refs_dir / selector.name, store=store, field=field, fix=fix)
        return self._read(path, store=store, field=field, fix=fix)

    def read_token(self, selector: ServiceAccountSelector | None, *, store: str, field: str) -> str:
        """Read a service account token, stripped of surrounding whitespace."""
        path = self.token_path(selector)
        if selector is None:
            fix = "mount the pod's service account token (automountServiceAccountToken)"
        else:
            _check_segment(selector.name, store=store, field=f"{field}.name")
            fix = f"mount a projected token of service account {selector.name} at {path}"
            _check_contained(path, path.parent, store=store, field=field, fix=fix)
        return self._read(path, store=store, field=field, fix=fix).decode().strip()

    def _read(self, path: Path, *, store: str, field: str, fix: str) -> bytes:
        try:
            # O_NONBLOCK keeps a FIFO planted at the path from blocking the agent.
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(descriptor, "rb") as stream:
                if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                    raise MissingReferenceError(
                        f"{field}: {path} is not a regular file", store=store, fix=fix
                    )
                content = stream.read(MAX_REFERENCE_BYTES + 1)
        except FileNotFoundError:
            raise MissingReferenceError(
                f"{field}: file {path} not found", store=store, fix=fix
            ) from None
        except OSError as error:
            raise MissingReferenceError(
                f"{field}: cannot read {path} ({error.strerror})", store=store, fix=fix
            ) from None
        if len(content) > MAX_REFERENCE_BYTES:
            raise MissingReferenceError(
                f"{field}: file {path} is larger than {MAX_REFERENCE_BYTES} bytes",
                store=store,
                fix="point the reference at the key itself, not at a bundle",
            )
        return content


def _check_segment(name: str, *, store: str, field: str) -> None:
    """Reject a name or key that would leave its directory (`..`, `/`, NUL)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise MissingReferenceError(
            f"{field}: invalid name; it must be a single Kubernetes name or key, without '/'",
            store=store,
            fix="use the Secret's name and one of its data keys",
        )


def _check_contained(path: Path, directory: Path, *, store: str, field: str, fix: str) -> None:
    """Require `path` to resolve inside `directory`, as a mounted volume's links do."""
    resolved = os.path.realpath(path)
    if not resolved.startswith(os.path.realpath(directory) + os.sep):
        raise MissingReferenceError(
            f"{field}: {path} resolves outside {directory}", store=store, fix=fix
        )
