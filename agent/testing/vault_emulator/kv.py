"""KV secrets engines, version 1 (`passthrough`) and version 2 (versioned), as Vault serves them.

KV v2 keeps every version with its created and deletion times, honours check-and-set, soft delete,
undelete, destroy, `max_versions` trimming and `delete_version_after`, and responds to reads of
deleted or destroyed versions with the 404 success envelope that hvac's
`raise_on_deleted_version=False` relies on. Paths that do not fit the versioned API get the
404 warning envelope Vault sends. Limitation: the `subkeys` endpoint is not implemented and
gets the invalid-path reply.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import formats
from .protocol import (
    DELETE,
    INVALID_KV2_PATH,
    KV2_ROOT_PATH,
    LIST,
    PATCH,
    READ,
    UPDATE,
    Engine,
    Reply,
    Request,
    VaultHTTPError,
    bad_request,
    not_found,
    unsupported_operation,
)
from .state import Mount

DEFAULT_MAX_VERSIONS = 10
MAX_CUSTOM_METADATA_KEYS = 64
MAX_CUSTOM_METADATA_KEY_LENGTH = 128
MAX_CUSTOM_METADATA_VALUE_LENGTH = 512


def list_children(keys: list[str], prefix: str) -> list[str]:
    """Return the sorted direct children of `prefix`: leaf names, and folders ending in `/`."""
    children = set()
    for key in keys:
        if not key.startswith(prefix) or key == prefix:
            continue
        remainder = key[len(prefix) :]
        head, slash, _ = remainder.partition("/")
        children.add(head + slash)
    return sorted(children)


def list_prefix(path: str) -> str:
    return path if path == "" or path.endswith("/") else path + "/"


class KV1Engine(Engine):
    """KV version 1: one unversioned map of key/values per path."""

    type = "kv"

    def __init__(self) -> None:
        self.mount: Mount | None = None
        self.entries: dict[str, dict[str, Any]] = {}

    def exists(self, request: Request) -> bool:
        return request.rest in self.entries

    def handle(self, request: Request) -> Reply | None:
        operation = request.operation
        if operation == LIST:
            keys = list_children(list(self.entries), list_prefix(request.rest))
            if not keys:
                raise not_found()
            return Reply(data={"keys": keys})
        if operation == READ:
            return self._read(request.rest)
        if operation == UPDATE:
            if not request.data:
                raise bad_request("missing data fields")
            self.entries[request.rest] = copy.deepcopy(request.data)
            return None
        if operation == DELETE:
            self.entries.pop(request.rest, None)
            return None
        raise unsupported_operation()

    def _read(self, key: str) -> Reply:
        entry = self.entries.get(key)
        if entry is None:
            raise not_found()
        # The stored `ttl` (or legacy `lease`) key is an advisory TTL reported as lease_duration.
        lease_duration = self.mount.effective_default_ttl if self.mount else 0
        for ttl_key in ("ttl", "lease"):
            if ttl_key in entry:
                try:
                    lease_duration = formats.parse_duration(entry[ttl_key])
                except formats.DurationError:
                    pass
                break
        return Reply(data=copy.deepcopy(entry), lease_duration=lease_duration)

    def put(self, path: str, data: dict[str, Any]) -> int:
        self.entries[path] = copy.deepcopy(data)
        return 1


@dataclass
class KVVersion:
    data: dict[str, Any] | None
    created_time: float
    deletion_time: float | None = None
    destroyed: bool = False


@dataclass
class KVSecret:
    created_time: float
    updated_time: float
    versions: dict[int, KVVersion] = field(default_factory=dict)
    current_version: int = 0
    oldest_version: int = 0
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: int = 0
    custom_metadata: dict[str, str] | None = None


@dataclass
class KVConfig:
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: int = 0


_ROOT_SEGMENTS = ("data", "metadata", "delete", "undelete", "destroy", "subkeys")
_CLI_COMMANDS = {READ: "get", UPDATE: "put", PATCH: "patch", LIST: "list", DELETE: "delete"}


class KV2Engine(Engine):
    """KV version 2: versioned secrets under `data/`, `metadata/`, `delete/`, `undelete/`..."""

    type = "kv"

    def __init__(self) -> None:
        self.mount: Mount | None = None
        self.secrets: dict[str, KVSecret] = {}
        self.config = KVConfig()

    # -- routing -------------------------------------------------------------------------------

    def exists(self, request: Request) -> bool:
        head, _, tail = request.rest.partition("/")
        if head in ("data", "metadata"):
            return tail in self.secrets
        return True

    def handle(self, request: Request) -> Reply | None:
        rest = request.rest
        operation = request.operation
        head, slash, tail = rest.partition("/")
        if rest == "config":
            return self._config(request)
        if head in _ROOT_SEGMENTS and not tail:
            if operation == LIST and head == "metadata":
                return self._list("")
            if operation == LIST:
                return self._invalid_path(operation)
            return Reply(status=404, warnings=[KV2_ROOT_PATH], mount_type="")
        if head == "data" and slash and not tail.endswith("/"):
            return self._data(request, tail)
        if head == "metadata" and slash:
            return self._metadata(request, tail)
        if head in ("delete", "undelete", "destroy") and slash:
            if operation != UPDATE:
                raise unsupported_operation()
            self._version_action(head, tail, request.field("versions"), now=request.state.now())
            return None
        return self._invalid_path(operation)

    def _invalid_path(self, operation: str) -> Reply:
        command = _CLI_COMMANDS.get(operation, "get")
        return Reply(status=404, warnings=[INVALID_KV2_PATH.format(command=command)], mount_type="")

    def _data(self, request: Request, path: str) -> Reply | None:
        operation = request.operation
        if operation == READ:
            return self._read(path, request.field("version"), request.state.now())
        if operation == UPDATE:
            return self._write(request, path)
        if operation == PATCH:
            return self._patch(request, path)
        if operation == DELETE:
            self.soft_delete(path, None, now=request.state.now())
            return None
        if operation == LIST:
            return self._invalid_path(operation)
        raise unsupported_operation()

    def _metadata(self, request: Request, path: str) -> Reply | None:
        operation = request.operation
        if operation == LIST:
            return self._list(list_prefix(path))
        if operation == READ:
            return self._read_metadata(path)
        if operation == UPDATE:
            self._write_metadata(request, path)
            return None
        if operation == DELETE:
            self.secrets.pop(path, None)
            return None
        raise unsupported_operation()

    # -- data ----------------------------------------------------------------------------------

    def _version_metadata(self, number: int, version: KVVersion, secret: KVSecret) -> dict:
        return {
            "created_time": formats.rfc3339(version.created_time),
            "custom_metadata": dict(secret.custom_metadata) if secret.custom_metadata else None,
            "deletion_time": (
                formats.rfc3339(version.deletion_time) if version.deletion_time is not None else ""
            ),
            "destroyed": version.destroyed,
            "version": number,
        }

    def _read(self, path: str, version_field: Any, now: float) -> Reply:
        secret = self.secrets.get(path)
        try:
            number = int(version_field or 0)
        except (TypeError, ValueError):
            # NOTE: Vault's exact text for an unparsable version is not confirmed.
            raise bad_request(f"error parsing version {version_field!r}") from None
        if secret is None:
            raise not_found()
        if number == 0:
            number = secret.current_version
        version = secret.versions.get(number)
        if version is None or number < secret.oldest_version:
            raise not_found()
        metadata = self._version_metadata(number, version, secret)
        deleted = version.deletion_time is not None and version.deletion_time <= now
        if deleted or version.destroyed:
            # Vault returns 404 with a full success envelope (no `errors` key) here.
            return Reply(status=404, data={"data": None, "metadata": metadata}, mount_type="")
        return Reply(data={"data": copy.deepcopy(version.data), "metadata": metadata})

    def _check_cas(self, request: Request, secret: KVSecret | None) -> None:
        options = request.field("options") or {}
        if not isinstance(options, dict):
            raise bad_request("error parsing options")
        current = secret.current_version if secret else 0
        required = self.config.cas_required or (secret is not None and secret.cas_required)
        cas = options.get("cas")
        if cas is None:
            if required:
                raise bad_request("check-and-set parameter required for this call")
            return
        try:
            cas_value = int(cas)
            if isinstance(cas, float) and cas != cas_value or isinstance(cas, bool):
                raise ValueError(cas)
        except (TypeError, ValueError):
            raise bad_request("error parsing check-and-set parameter") from None
        if cas_value != current:
            raise bad_request("check-and-set parameter did not match the current version")

    def _write(self, request: Request, path: str) -> Reply:
        data = request.field("data")
        if data is None:
            raise bad_request("no data provided")
        if not isinstance(data, dict):
            raise bad_request("data must be a JSON object")
        self._check_cas(request, self.secrets.get(path))
        number = self.put(path, data, now=request.state.now())
        secret = self.secrets[path]
        return Reply(data=self._version_metadata(number, secret.versions[number], secret))

    def _patch(self, request: Request, path: str) -> Reply:
        data = request.field("data")
        if not isinstance(data, dict):
            raise bad_request("no data provided")
        now = request.state.now()
        secret = self.secrets.get(path)
        current = secret.versions.get(secret.current_version) if secret else None
        if (
            secret is None
            or current is None
            or current.destroyed
            or (current.deletion_time is not None and current.deletion_time <= now)
        ):
            raise not_found()
        self._check_cas(request, secret)
        merged = _merge_patch(copy.deepcopy(current.data or {}), data)
        number = self.put(path, merged, now=now)
        return Reply(data=self._version_metadata(number, secret.versions[number], secret))

    def put(self, path: str, data: dict[str, Any], *, now: float) -> int:
        """Store a new version of `path` and trim old versions; return the new version number."""
        secret = self.secrets.get(path)
        if secret is None:
            secret = KVSecret(created_time=now, updated_time=now)
            self.secrets[path] = secret
        number = secret.current_version + 1
        delete_after = secret.delete_version_after or self.config.delete_version_after
        secret.versions[number] = KVVersion(
            data=copy.deepcopy(data),
            created_time=now,
            deletion_time=now + delete_after if delete_after > 0 else None,
        )
        secret.current_version = number
        secret.updated_time = now
        self._trim(secret)
        return number

    def _trim(self, secret: KVSecret) -> None:
        limit = self.config.max_versions
        if secret.max_versions and (limit == 0 or secret.max_versions < limit):
            limit = secret.max_versions
        limit = limit or DEFAULT_MAX_VERSIONS
        while len(secret.versions) > limit:
            del secret.versions[min(secret.versions)]
            secret.oldest_version = min(secret.versions)

    # -- delete, undelete, destroy -------------------------------------------------------------

    def soft_delete(self, path: str, versions: list[int] | None, *, now: float) -> None:
        """Mark versions deleted (the current one when `versions` is None)."""
        secret = self.secrets.get(path)
        if secret is None:
            return
        numbers = [secret.current_version] if versions is None else versions
        for number in numbers:
            version = secret.versions.get(number)
            if version is None or version.destroyed:
                continue
            if version.deletion_time is None or version.deletion_time > now:
                version.deletion_time = now
        secret.updated_time = now

    def _version_action(self, action: str, path: str, raw_versions: Any, *, now: float) -> None:
        versions = _parse_versions(raw_versions)
        if not versions:
            raise bad_request("no version number provided")
        if action == "delete":
            self.soft_delete(path, versions, now=now)
        elif action == "undelete":
            self.undelete(path, versions)
        else:
            self.destroy(path, versions)

    def undelete(self, path: str, versions: list[int]) -> None:
        secret = self.secrets.get(path)
        for number in versions if secret else []:
            version = secret.versions.get(number)
            if version is not None and not version.destroyed:
                version.deletion_time = None

    def destroy(self, path: str, versions: list[int]) -> None:
        secret = self.secrets.get(path)
        for number in versions if secret else []:
            version = secret.versions.get(number)
            if version is not None:
                version.destroyed = True
                version.data = None

    # -- metadata, list, config ----------------------------------------------------------------

    def _read_metadata(self, path: str) -> Reply:
        secret = self.secrets.get(path)
        if secret is None:
            raise not_found()
        versions = {
            str(number): {
                "created_time": formats.rfc3339(version.created_time),
                "deletion_time": (
                    formats.rfc3339(version.deletion_time)
                    if version.deletion_time is not None
                    else ""
                ),
                "destroyed": version.destroyed,
            }
            for number, version in sorted(secret.versions.items())
        }
        return Reply(
            data={
                "cas_required": secret.cas_required,
                "created_time": formats.rfc3339(secret.created_time),
                "current_version": secret.current_version,
                "custom_metadata": (
                    dict(secret.custom_metadata) if secret.custom_metadata else None
                ),
                "delete_version_after": formats.go_duration(secret.delete_version_after),
                "max_versions": secret.max_versions,
                "oldest_version": secret.oldest_version,
                "updated_time": formats.rfc3339(secret.updated_time),
                "versions": versions,
            }
        )

    def _write_metadata(self, request: Request, path: str) -> None:
        now = request.state.now()
        settings = _parse_settings(request)
        custom = request.field("custom_metadata")
        if custom is not None:
            _validate_custom_metadata(custom)
        secret = self.secrets.get(path)
        if secret is None:
            secret = KVSecret(created_time=now, updated_time=now)
            self.secrets[path] = secret
        if "max_versions" in settings:
            secret.max_versions = settings["max_versions"]
        if "cas_required" in settings:
            secret.cas_required = settings["cas_required"]
        if "delete_version_after" in settings:
            secret.delete_version_after = settings["delete_version_after"]
        if custom is not None:
            secret.custom_metadata = {str(k): str(v) for k, v in custom.items()} or None
        secret.updated_time = now
        self._trim(secret)

    def _list(self, prefix: str) -> Reply:
        keys = list_children(list(self.secrets), prefix)
        if not keys:
            raise not_found()
        return Reply(data={"keys": keys})

    def _config(self, request: Request) -> Reply | None:
        if request.operation == READ:
            return Reply(
                data={
                    "cas_required": self.config.cas_required,
                    "delete_version_after": formats.go_duration(self.config.delete_version_after),
                    "max_versions": self.config.max_versions,
                }
            )
        if request.operation == UPDATE:
            settings = _parse_settings(request)
            for name, value in settings.items():
                setattr(self.config, name, value)
            return None
        raise unsupported_operation()


def _merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Apply a JSON merge patch (RFC 7386): null removes a key, objects merge recursively."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _parse_versions(raw: Any) -> list[int]:
    if raw is None or raw == "":
        return []
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        items = [items]
    try:
        return [int(item) for item in items]
    except (TypeError, ValueError):
        raise bad_request("versions must be a list of integers") from None


def _parse_settings(request: Request) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    try:
        if request.field("max_versions") is not None:
            settings["max_versions"] = int(request.field("max_versions"))
        if request.field("cas_required") is not None:
            flag = formats.parse_bool(request.field("cas_required"))
            if flag is None:
                raise ValueError("cas_required")
            settings["cas_required"] = flag
        if request.field("delete_version_after") is not None:
            settings["delete_version_after"] = formats.parse_duration(
                request.field("delete_version_after")
            )
    except (TypeError, ValueError) as error:
        raise bad_request(f"invalid metadata setting: {error}") from None
    return settings


def _validate_custom_metadata(custom: Any) -> None:
    if not isinstance(custom, dict):
        raise bad_request("custom_metadata must be a map of strings")
    problems = []
    key_limit = MAX_CUSTOM_METADATA_KEY_LENGTH
    value_limit = MAX_CUSTOM_METADATA_VALUE_LENGTH
    if len(custom) > MAX_CUSTOM_METADATA_KEYS:
        problems.append(f"payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys")
    for key, value in custom.items():
        if len(str(key)) > key_limit:
            problems.append(f"length of key {key!r} is greater than {key_limit}")
        if len(str(value)) > value_limit:
            problems.append(f"length of value for key {key!r} is greater than {value_limit}")
    if problems:
        raise VaultHTTPError(400, "custom_metadata validation failed: " + "; ".join(problems))
