"""The Vault store: KV v1 and KV v2 reads through hvac, one token per store.

Where a remote key lives:
- With `provider.path` set, that path is the KV mount (a trailing `/data` is dropped for v2) and
  the remote key is the secret's path inside it. As in External Secrets Operator, a remote key
  that starts with the mount (`secret/order-service`, or `secret/data/order-service` for v2) has
  that part removed first.
- Without `provider.path`, the first segment of the remote key is the mount. For v2 a following
  `data/` segment is dropped, so `secret/data/order-service` and `secret/order-service` both read
  `order-service` on mount `secret`. A mount whose own path has a `/` needs `provider.path`.

The KV version comes from `provider.version` only; mounts are never probed. When a KV v1 read gets
Vault's 404 warning for a versioned (KV v2) mount, the error names the version mismatch. A remote
value is the secret's data map (a dict); `agent.snapshot` applies `property` and renders JSON.

`fetch` reads each distinct secret and version once (Vault has no batch read) and returns a
per-key error for a missing, deleted or denied secret. `fetch_prefix` lists recursively and reads
every secret found; its keys are the prefix as given joined with the path beneath it, so each key
reads the same secret again through `fetch` and `relative_key_name` strips the prefix cleanly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hvac.exceptions
import requests

from agent.errors import (
    AccessDeniedError,
    InvalidValueError,
    RemoteKeyNotFoundError,
    StoreError,
)
from agent.stores import RemoteKey, RemoteValue, Store
from agent.stores.vault_auth import VaultConnection
from agent.stores.vault_client import vault_errors

if TYPE_CHECKING:
    from agent.declarations import StoreDeclaration
    from agent.metrics import Metrics
    from agent.refs import ReferenceResolver

_VERSION = re.compile(r"[0-9]+")
_VaultErrors = (hvac.exceptions.VaultError, requests.RequestException)
# Errors that concern one secret. Every other failure concerns the whole store.
_PerSecretErrors = (
    hvac.exceptions.InvalidPath,
    hvac.exceptions.Forbidden,
    hvac.exceptions.InvalidRequest,
)


@dataclass(frozen=True)
class KVLocation:
    """One secret (and optionally one version) on one KV mount."""

    mount: str
    path: str
    version: int | None
    kv_version: str

    @property
    def api_path(self) -> str:
        """The path Vault's policies name for reading this secret."""
        if self.kv_version == "v2":
            return f"{self.mount}/data/{self.path}"
        return f"{self.mount}/{self.path}"

    @property
    def kv_label(self) -> str:
        return "KV v2" if self.kv_version == "v2" else "KV v1"


def kv_mount(path: str | None, kv_version: str) -> str | None:
    """Return the mount named by `provider.path`, or None when the remote keys name it."""
    if path is None:
        return None
    parts = _segments(path)
    if kv_version == "v2" and parts and parts[-1] == "data":
        parts = parts[:-1]
    return "/".join(parts) or None


class VaultStore(Store):
    """A KV mount of one Vault server, reached with the store's own token.

    `revoke_on_close` (default True) makes `close()` revoke the token this store created by
    login; a token from `tokenSecretRef` is never revoked. `maintain()` renews or replaces the
    token when due and returns the seconds until the next time it is due.
    """

    def __init__(
        self,
        declaration: StoreDeclaration,
        *,
        refs: ReferenceResolver,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(declaration, refs=refs, metrics=metrics)
        provider = declaration.spec.provider.vault
        assert provider is not None, "VaultStore needs a provider.vault declaration"
        self.provider = provider
        self.kv_version = provider.version
        self.mount = kv_mount(provider.path, provider.version)
        self.connection = VaultConnection(
            store=self.name, provider=provider, refs=refs, metrics=metrics, clock=clock
        )
        # Set once a 403 led to checking the token in the current call, so that a policy
        # denial on many keys costs one check, not one per key.
        self._token_checked = False

    @property
    def revoke_on_close(self) -> bool:
        return self.connection.revoke_on_close

    @revoke_on_close.setter
    def revoke_on_close(self, value: bool) -> None:
        self.connection.revoke_on_close = value

    # -- Store interface ---------------------------------------------------------------------

    def fetch(self, keys: Sequence[RemoteKey]) -> dict[RemoteKey, RemoteValue | Exception]:
        """Read each remote key; per-key failures are returned in place of the value.

        Raises StoreUnavailableError (transient) when Vault cannot be reached, is sealed or
        fails with 5xx, AccessDeniedError when the login is rejected, and TLSVerificationError
        when Vault's certificate is not trusted.
        """
        if not keys:
            return {}
        self.connection.ensure_token()
        self._token_checked = False
        results: dict[RemoteKey, RemoteValue | Exception] = {}
        responses: dict[KVLocation, Any] = {}
        for remote_key in keys:
            if remote_key in results:
                continue
            try:
                location = self.locate(remote_key)
            except InvalidValueError as error:
                results[remote_key] = error
                continue
            if location not in responses:
                responses[location] = self._read_response(location)
            results[remote_key] = self._value_or_error(remote_key, location, responses[location])
        return results

    def fetch_prefix(self, path: str) -> dict[str, RemoteValue]:
        """Read every secret beneath `path`, recursively; keys are `path` + `/` + the rest.

        Secrets that vanish or whose latest version is deleted between the list and the read
        are left out. A denied list or read raises AccessDeniedError for the whole call.
        """
        mount, base = self.locate_prefix(path)
        self.connection.ensure_token()
        self._token_checked = False
        shown_prefix = path.rstrip("/")
        values: dict[str, RemoteValue] = {}
        pending = [base]
        # Limitation: one LIST per folder and one read per secret, in sequence; a large tree
        # takes as many requests as it has folders and secrets.
        while pending:
            folder = pending.pop()
            for name in self._list(mount, folder, prefix=path):
                child = f"{folder}/{name}" if folder else name
                if name.endswith("/"):
                    pending.append(child.rstrip("/"))
                    continue
                location = KVLocation(mount, child, None, self.kv_version)
                response = self._read_response(location)
                if isinstance(response, hvac.exceptions.InvalidPath):
                    continue
                remote_key = RemoteKey(f"{mount}/{child}")
                value = self._value_or_error(remote_key, location, response)
                if isinstance(value, Exception):
                    raise value
                relative = child[len(base) :].strip("/") if base else child
                values[f"{shown_prefix}/{relative}" if shown_prefix else relative] = value
        return values

    def maintain(self) -> float | None:
        """Renew or replace the token if due; return seconds until it is next due, or None."""
        return self.connection.maintain()

    def close(self) -> None:
        """Revoke the token this store created (unless `revoke_on_close` is off); let go."""
        self.connection.close()

    # -- where a remote key lives ------------------------------------------------------------

    def locate(self, remote_key: RemoteKey) -> KVLocation:
        """Resolve a remote key to a mount, a path and a version; InvalidValueError if it can't."""
        parts = _segments(remote_key.key)
        if self.mount is not None:
            mount = self.mount
            parts = self._strip_mount(parts, drop=("data",))
        elif parts:
            mount = parts[0]
            parts = parts[1:]
            if self.kv_version == "v2" and parts[:1] == ["data"]:
                parts = parts[1:]
        else:
            mount = ""
        if not mount or not parts:
            raise InvalidValueError(
                "names no secret beneath a KV mount",
                store=self.name,
                remote_key=str(remote_key),
                fix="write remoteRef.key as mount/path (e.g. secret/order-service), or set the "
                "store's path to the mount and the key to the path inside it",
            )
        return KVLocation(mount, "/".join(parts), self._version(remote_key), self.kv_version)

    def locate_prefix(self, path: str) -> tuple[str, str]:
        """Resolve a prefix to a mount and the folder beneath it (`""` for the whole mount)."""
        parts = _segments(path)
        if self.mount is not None:
            return self.mount, "/".join(self._strip_mount(parts, drop=("data", "metadata")))
        if not parts:
            raise InvalidValueError(
                f"path {path!r} names no KV mount",
                store=self.name,
                remote_key=path,
                fix="start the path with the mount (e.g. secret/app), or set the store's path",
            )
        rest = parts[1:]
        if self.kv_version == "v2" and rest[:1] in (["data"], ["metadata"]):
            rest = rest[1:]
        return parts[0], "/".join(rest)

    def _strip_mount(self, parts: list[str], *, drop: tuple[str, ...]) -> list[str]:
        # External Secrets Operator accepts keys that repeat the store's mount; do the same.
        # NOTE: so a secret whose own path starts with the mount's name cannot be addressed.
        assert self.mount is not None
        mount_parts = self.mount.split("/")
        if parts[: len(mount_parts)] != mount_parts or len(parts) == len(mount_parts):
            return parts
        rest = parts[len(mount_parts) :]
        if self.kv_version == "v2" and rest[:1] and rest[0] in drop:
            rest = rest[1:]
        return rest

    def _version(self, remote_key: RemoteKey) -> int | None:
        version = remote_key.version
        if version is None:
            return None
        if self.kv_version == "v1":
            raise InvalidValueError(
                "KV v1 keeps no versions, but remoteRef.version is set",
                store=self.name,
                remote_key=str(remote_key),
                fix="remove remoteRef.version, or use a KV v2 mount with version: v2",
            )
        if not _VERSION.fullmatch(version.strip()):
            raise InvalidValueError(
                f"version {version!r} is not a KV v2 version number",
                store=self.name,
                remote_key=remote_key.key,
                fix="set remoteRef.version to a number such as 3, or remove it to read the "
                "latest version",
            )
        return int(version)

    # -- requests ----------------------------------------------------------------------------

    def _read_response(self, location: KVLocation) -> Any:
        """Read one secret: Vault's response, or the hvac error that concerns this secret only."""
        try:
            return self._with_token_check(lambda: self._read_once(location))
        except _PerSecretErrors as error:
            return error
        except _VaultErrors as error:
            raise self._store_error(error) from None

    def _read_once(self, location: KVLocation) -> Any:
        client = self.connection.client
        if location.kv_version == "v2":
            return self.connection.request(
                "read",
                lambda: client.secrets.kv.v2.read_secret_version(
                    path=location.path,
                    version=location.version,
                    mount_point=location.mount,
                    raise_on_deleted_version=True,
                ),
            )
        return self.connection.request(
            "read",
            lambda: client.secrets.kv.v1.read_secret(
                path=location.path, mount_point=location.mount
            ),
        )

    def _list(self, mount: str, folder: str, *, prefix: str) -> list[str]:
        client = self.connection.client
        kv = client.secrets.kv.v2 if self.kv_version == "v2" else client.secrets.kv.v1
        try:
            response = self._with_token_check(
                lambda: self.connection.request(
                    "list", lambda: kv.list_secrets(path=folder, mount_point=mount)
                )
            )
        except hvac.exceptions.InvalidPath as error:
            if self.kv_version == "v1" and _reports_kv_v2_mount(error):
                raise self._kv_v2_mount_error(mount, remote_key=prefix) from None
            return []
        except hvac.exceptions.Forbidden:
            policy_path = self._list_policy_path(mount, folder)
            raise AccessDeniedError(
                f"permission denied: the token's policies do not allow list on {policy_path}"
                f"{self._in_namespace()}",
                store=self.name,
                remote_key=prefix,
                fix=f"grant list on {policy_path} in a Vault policy of "
                f"{self.connection.identity()}",
            ) from None
        except _VaultErrors as error:
            raise self._store_error(error) from None
        keys = response.get("data", {}).get("keys") if isinstance(response, dict) else None
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise StoreError(
                f"Vault's response to the list of {self._list_policy_path(mount, folder)} has "
                "no list of keys",
                store=self.name,
                remote_key=prefix,
            )
        return keys

    def _with_token_check(self, send: Callable[[], Any]) -> Any:
        """Send a request; after a 403, check the token once per call and retry if replaced."""
        try:
            return send()
        except hvac.exceptions.Forbidden:
            if self._token_checked:
                raise
            self._token_checked = True
            if not self.connection.recover_from_forbidden():
                raise
        return send()

    def _store_error(self, error: Exception) -> StoreError:
        translated = self.connection.store_wide_error(error)
        if translated is not None:
            return translated
        detail = vault_errors(error) if isinstance(error, hvac.exceptions.VaultError) else ""
        return StoreError(
            f"unexpected response from Vault ({type(error).__name__}{': ' if detail else ''}"
            f"{detail})",
            store=self.name,
        )

    # -- responses ---------------------------------------------------------------------------

    def _value_or_error(
        self, remote_key: RemoteKey, location: KVLocation, response: Any
    ) -> RemoteValue | StoreError:
        if isinstance(response, hvac.exceptions.InvalidPath):
            return self._not_found(remote_key, location, response)
        if isinstance(response, hvac.exceptions.Forbidden):
            return AccessDeniedError(
                "permission denied: the token's policies do not allow read on "
                f"{location.api_path}{self._in_namespace()}",
                store=self.name,
                remote_key=str(remote_key),
                fix=f"grant read on {location.api_path} in a Vault policy of "
                f"{self.connection.identity()}",
            )
        if isinstance(response, hvac.exceptions.InvalidRequest):
            detail = vault_errors(response)
            return StoreError(
                f"Vault rejected the read of {location.api_path}{f' ({detail})' if detail else ''}",
                store=self.name,
                remote_key=str(remote_key),
                fix="check remoteRef.key and the store's path and version",
            )

        body = response.get("data") if isinstance(response, dict) else None
        if location.kv_version == "v2" and isinstance(body, dict):
            body = body.get("data")
        if not isinstance(body, dict):
            kind = type(body).__name__ if body is not None else "no data"
            return InvalidValueError(
                f"the secret at {location.api_path} is not a map of keys to values ({kind})",
                store=self.name,
                remote_key=str(remote_key),
                fix=f"check that the mount {location.mount} is {location.kv_label} as the "
                "store's version says",
            )
        return body

    def _not_found(
        self, remote_key: RemoteKey, location: KVLocation, error: hvac.exceptions.InvalidPath
    ) -> StoreError:
        if location.kv_version == "v1" and _reports_kv_v2_mount(error):
            return self._kv_v2_mount_error(location.mount, remote_key=str(remote_key))
        where = f"on mount {location.mount} ({location.kv_label}){self._in_namespace()}"
        metadata = _deleted_version_metadata(error)
        if metadata is None:
            subject = "not found"
            if location.version is not None:
                subject = f"version {location.version} not found"
            return RemoteKeyNotFoundError(
                f"{subject} {where}",
                store=self.name,
                remote_key=str(remote_key),
                fix="check remoteRef.key"
                + (", remoteRef.version" if location.version is not None else "")
                + " and the store's path",
            )

        version = metadata.get("version", location.version)
        which = f"version {version}" if location.version is not None else "the latest version"
        if location.version is None and version is not None:
            which += f" ({version})"
        if metadata.get("destroyed"):
            return RemoteKeyNotFoundError(
                f"{which} was destroyed {where} and cannot be recovered",
                store=self.name,
                remote_key=str(remote_key),
                fix="write a new version, or set remoteRef.version to a version that exists",
            )
        return RemoteKeyNotFoundError(
            f"{which} was deleted {where}",
            store=self.name,
            remote_key=str(remote_key),
            fix=f"undelete it (vault kv undelete -mount={location.mount} -versions={version} "
            f"{location.path}), write a new version, or set remoteRef.version to a version "
            "that was not deleted",
        )

    def _kv_v2_mount_error(self, mount: str, *, remote_key: str) -> StoreError:
        """Build the error for a KV v1 request that Vault rejected as only a KV v2 mount does."""
        return StoreError(
            f"mount {mount}{self._in_namespace()} is KV v2 (Vault rejected the KV v1 path as "
            "invalid for a versioned K/V secrets engine), but the store has version: v1",
            store=self.name,
            remote_key=remote_key,
            fix="set spec.provider.vault.version to v2 in the store, or remove it (v2 is the "
            "default)",
        )

    def _in_namespace(self) -> str:
        namespace = self.connection.namespace
        return f" in namespace {namespace}" if namespace else ""

    def _list_policy_path(self, mount: str, folder: str) -> str:
        middle = "metadata/" if self.kv_version == "v2" else ""
        return f"{mount}/{middle}{folder}".rstrip("/") + "/"


def _segments(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _reports_kv_v2_mount(error: hvac.exceptions.InvalidPath) -> bool:
    """Return whether a 404 carries Vault's warning for a KV v1 style path on a KV v2 mount.

    Vault returns 404 with the warning "Invalid path for a versioned K/V secrets engine ..." and
    no error for such a request, so the mismatch can be distinguished from a missing secret
    without asking Vault about the mount.
    """
    body = error.json
    warnings = body.get("warnings") if isinstance(body, dict) else None
    if not isinstance(warnings, list):
        return False
    return any(isinstance(text, str) and "versioned K/V" in text for text in warnings)


def _deleted_version_metadata(error: hvac.exceptions.InvalidPath) -> Mapping[str, Any] | None:
    """Return the version metadata Vault sends with a 404 for a deleted or destroyed version."""
    body = error.json
    data = body.get("data") if isinstance(body, dict) else None
    metadata = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(metadata, dict):
        return None
    if metadata.get("destroyed") or metadata.get("deletion_time"):
        return metadata
    return None
