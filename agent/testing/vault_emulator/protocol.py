"""Request and reply types shared by the router and the engines, and Vault's error texts.

An engine handler receives a `Request` and returns a `Reply` (rendered as the success envelope),
`None` (rendered as 204 No Content), or raises `VaultHTTPError` (rendered as `{"errors": [...]}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import Namespace, Token, VaultState

PERMISSION_DENIED = "permission denied"
# Vault wraps an ACL denial in a go-multierror, which prints this way.
ACL_DENIED = "1 error occurred:\n\t* permission denied\n\n"
SEALED = "Vault is sealed"
INVALID_KV2_PATH = (
    "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API "
    "endpoints to use. If using the Vault CLI, use 'vault kv {command}' for this operation."
)
KV2_ROOT_PATH = "Non-listing operations on the root of a K/V v2 mount are not supported."

# Operation names as Vault's logical layer uses them.
READ = "read"
LIST = "list"
UPDATE = "update"
CREATE = "create"
DELETE = "delete"
PATCH = "patch"
HEADER = "header"


class VaultHTTPError(Exception):
    """An error reply: HTTP status and the strings for the `errors` array."""

    def __init__(
        self,
        status: int,
        *errors: str,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {list(errors)}")
        self.status = status
        self.errors = list(errors)
        self.data = data
        self.headers = dict(headers or {})


def bad_request(message: str) -> VaultHTTPError:
    return VaultHTTPError(400, message)


def not_found() -> VaultHTTPError:
    return VaultHTTPError(404)


@dataclass
class Reply:
    """A success envelope. `raw` replaces the envelope with a plain JSON body."""

    data: Any = None
    status: int = 200
    auth: dict[str, Any] | None = None
    warnings: list[str] | None = None
    lease_id: str = ""
    renewable: bool = False
    lease_duration: int = 0
    raw: Any = None
    # Send the status with an empty body (for example 202 from an asynchronous revoke).
    empty: bool = False
    # sys/mounts and similar routes copy every key of `data` to the top level as well.
    data_at_top_level: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # None means "the type of the mount that handled the request", filled in by the router.
    mount_type: str | None = None


@dataclass
class Request:
    """One logical request after transport parsing, authentication and routing."""

    state: VaultState
    method: str
    operation: str
    path: str
    data: dict[str, Any] | None
    namespace: Namespace
    token: Token | None
    query: dict[str, str]
    # The path inside the mount that handles the request: "data/app/db" for "secret/data/app/db".
    rest: str = ""
    mount_path: str = ""

    def field(self, name: str, default: Any = None) -> Any:
        """Return a body field; JSON null counts as unset, as in Vault."""
        if not self.data:
            return default
        value = self.data.get(name)
        return default if value is None else value

    def require_sudo(self) -> None:
        if not self.state.allowed(self.token, self.namespace, self.path, "sudo"):
            raise VaultHTTPError(403, ACL_DENIED)

    def allowed(self, capability: str, path: str | None = None) -> bool:
        return self.state.allowed(self.token, self.namespace, path or self.path, capability)


def capability_for(operation: str, *, exists: bool) -> str:
    """Map a logical operation to the ACL capability it needs."""
    if operation == UPDATE:
        return UPDATE if exists else CREATE
    return operation


class Engine:
    """Base for the handler of a mount's requests: a secrets engine or an auth method."""

    type = ""

    def exists(self, request: Request) -> bool:
        """Return whether the target of a write exists; it selects `update` over `create`."""
        return True

    def capability(self, request: Request) -> str | None:
        """Return the capability the request needs, or None for an unauthenticated path."""
        exists = request.operation == UPDATE and self.exists(request)
        return capability_for(request.operation, exists=exists)

    def handle(self, request: Request) -> Reply | None:
        raise NotImplementedError

    def unauthenticated(self, rest: str) -> bool:
        """Return whether `rest` (the path inside the mount) needs no token, like a login."""
        return False


def no_handler(path: str) -> VaultHTTPError:
    """Return the 404 Vault's router gives for a path under no mount."""
    return VaultHTTPError(404, f'no handler for route "{path}". route entry not found.')


def unsupported_path() -> VaultHTTPError:
    """Return the 404 for a path inside a mount that none of the backend's routes matches."""
    return VaultHTTPError(404, "unsupported path")


def unsupported_operation() -> VaultHTTPError:
    return VaultHTTPError(405, "unsupported operation")
