"""Dynamic secrets and their leases: the `database` secrets engine and `sys/leases/*`.

Each `database/creds/<role>` read registers a lease owned by the calling token. A renewal counts
from now and is capped at the lease's issue time plus the role's max TTL. A capped renewal
carries Vault's warning, and a renewal past the cap is rejected. When a lease is revoked
(explicitly, by expiry, or because its token was revoked), the credential is dropped and the
`on_credentials_revoked` hook runs.

Limitation: static roles and connection verification are not implemented. `config/` writes are
stored as given, and nothing connects to a database unless a hook does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import formats
from .kv import list_children, list_prefix
from .protocol import (
    DELETE,
    LIST,
    READ,
    UPDATE,
    Engine,
    Reply,
    Request,
    VaultHTTPError,
    bad_request,
    not_found,
    unsupported_operation,
    unsupported_path,
)
from .state import Lease, Mount

logger = logging.getLogger(__name__)

CredentialsCreatedHook = Callable[[str, str, str, int], None]
CredentialsRevokedHook = Callable[[str], None]


@dataclass
class CredentialHooks:
    """Callbacks a test can set to back the database engine with a real database."""

    on_credentials_created: CredentialsCreatedHook | None = None
    on_credentials_revoked: CredentialsRevokedHook | None = None


@dataclass
class DatabaseRole:
    name: str
    default_ttl: int = 0
    max_ttl: int = 0
    db_name: str = ""
    creation_statements: list[str] = field(default_factory=list)
    revocation_statements: list[str] = field(default_factory=list)
    # False makes leases that cannot be renewed, like those of AWS STS credentials.
    renewable: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "db_name": self.db_name,
            "default_ttl": self.default_ttl,
            "max_ttl": self.max_ttl,
            "creation_statements": list(self.creation_statements),
            "revocation_statements": list(self.revocation_statements),
            "renew_statements": [],
            "rollback_statements": [],
            "credential_type": "password",
        }


class DatabaseEngine(Engine):
    """The `database` secrets engine: roles issue fresh username/password pairs under a lease."""

    type = "database"

    def __init__(self, hooks: CredentialHooks) -> None:
        self.mount: Mount | None = None
        self.hooks = hooks
        self.roles: dict[str, DatabaseRole] = {}
        self.connections: dict[str, dict[str, Any]] = {}
        # Live credentials: username -> password. Kept so tests can check a credential still works.
        self.users: dict[str, str] = {}

    def exists(self, request: Request) -> bool:
        head, _, name = request.rest.partition("/")
        if head == "roles":
            return name in self.roles
        if head == "config":
            return name in self.connections
        return True

    def handle(self, request: Request) -> Reply | None:
        head, slash, name = request.rest.partition("/")
        operation = request.operation
        if head == "creds" and slash and name and "/" not in name:
            if operation != READ:
                raise unsupported_operation()
            return self.issue_credentials(request, name)
        if head in ("roles", "config") and operation == LIST and not name:
            source = self.roles if head == "roles" else self.connections
            if not source:
                raise not_found()
            return Reply(data={"keys": sorted(source)})
        if head == "roles" and name:
            return self._role(request, name)
        if head == "config" and name:
            return self._connection(request, name)
        raise unsupported_path()

    def _role(self, request: Request, name: str) -> Reply | None:
        if request.operation == READ:
            role = self.roles.get(name)
            if role is None:
                raise not_found()
            return Reply(data=role.describe())
        if request.operation == UPDATE:
            role = self.roles.get(name) or DatabaseRole(name=name)
            try:
                if request.field("default_ttl") is not None:
                    role.default_ttl = formats.parse_duration(request.field("default_ttl"))
                if request.field("max_ttl") is not None:
                    role.max_ttl = formats.parse_duration(request.field("max_ttl"))
            except formats.DurationError as error:
                raise bad_request(str(error)) from None
            role.db_name = str(request.field("db_name", role.db_name))
            for statements in ("creation_statements", "revocation_statements"):
                if request.field(statements) is not None:
                    setattr(role, statements, formats.string_list(request.field(statements)))
            self.roles[name] = role
            return None
        if request.operation == DELETE:
            self.roles.pop(name, None)
            return None
        raise unsupported_operation()

    def _connection(self, request: Request, name: str) -> Reply | None:
        if request.operation == READ:
            if name not in self.connections:
                raise not_found()
            # Vault never returns the connection password; neither does the emulator.
            shown = {k: v for k, v in self.connections[name].items() if k != "password"}
            return Reply(data=shown)
        if request.operation == UPDATE:
            self.connections[name] = dict(request.data or {})
            return None
        if request.operation == DELETE:
            self.connections.pop(name, None)
            return None
        raise unsupported_operation()

    def issue_credentials(self, request: Request, role_name: str) -> Reply:
        """Create a credential for `role_name` and register its lease."""
        role = self.roles.get(role_name)
        if role is None:
            raise bad_request(f"unknown role: {role_name}")
        assert self.mount is not None
        state = request.state
        max_ttl = role.max_ttl or self.mount.effective_max_ttl
        max_ttl = min(max_ttl, self.mount.effective_max_ttl)
        default_ttl = role.default_ttl or self.mount.effective_default_ttl
        ttl = default_ttl
        warnings = None
        if ttl > max_ttl:
            warnings = [formats.ttl_capped_warning(ttl, max_ttl)]
            ttl = max_ttl

        display = request.token.display_name if request.token else "token"
        username = _username(display, role_name, now=state.now())
        password = "A1a-" + formats.random_base62(16)
        if self.hooks.on_credentials_created is not None:
            try:
                self.hooks.on_credentials_created(role_name, username, password, ttl)
            except Exception as error:
                # The exception text may quote the statement or the password, so only its type
                # goes into the reply.
                logger.exception("event=credentials_hook_failed role=%s", role_name)
                raise VaultHTTPError(
                    500, f"failed to create credentials: {type(error).__name__}"
                ) from None
        self.users[username] = password

        lease_id = f"{request.path}/{formats.random_base62(24)}"
        if request.namespace.path:
            lease_id += "." + request.namespace.id
        now = state.now()
        state.register_lease(
            Lease(
                id=lease_id,
                namespace=request.namespace.path,
                mount_path=self.mount.path,
                role=role_name,
                issue_time=now,
                expire_time=now + ttl,
                ttl=ttl,
                renewable=role.renewable,
                token_id=request.token.id if request.token else None,
                default_ttl=default_ttl,
                max_ttl=max_ttl,
                on_revoke=lambda: self.drop_user(username),
            )
        )
        return Reply(
            data={"username": username, "password": password},
            lease_id=lease_id,
            renewable=role.renewable,
            lease_duration=ttl,
            warnings=warnings,
        )

    def drop_user(self, username: str) -> None:
        self.users.pop(username, None)
        if self.hooks.on_credentials_revoked is not None:
            self.hooks.on_credentials_revoked(username)


def _username(display_name: str, role: str, *, now: float) -> str:
    # The shape of Vault's default template: v-<display 8>-<role 8>-<random 20>-<unix>.
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", text)[:8]

    name = f"v-{clean(display_name)}-{clean(role)}-{formats.random_base62(20)}-{int(now)}"
    return name[:63]


# -- sys/leases ---------------------------------------------------------------------------------


def _lease_id(request: Request, url_suffix: str) -> str:
    lease_id = request.field("lease_id") or url_suffix
    if not lease_id:
        raise bad_request("lease_id must be specified")
    return str(lease_id)


def renew(request: Request, url_suffix: str) -> Reply:
    """Handle `sys/leases/renew` (and the legacy `sys/renew`)."""
    lease_id = _lease_id(request, url_suffix)
    state = request.state
    if lease_id.startswith("auth/"):
        raise bad_request("tokens cannot be renewed through this endpoint")
    lease = state.leases.get(lease_id)
    if lease is None:
        raise bad_request("lease not found")
    if lease.namespace != request.namespace.path:
        raise bad_request("cannot renew a lease across namespaces")
    if not lease.renewable:
        raise bad_request("lease is not renewable")
    try:
        increment = formats.parse_duration(request.field("increment"))
    except formats.DurationError as error:
        raise bad_request(str(error)) from None

    now = state.now()
    max_valid_ttl = (
        formats.whole_seconds(lease.issue_time) + lease.max_ttl - formats.whole_seconds(now)
    )
    if max_valid_ttl <= 0:
        raise bad_request("past the max TTL, cannot renew")
    ttl = increment if increment > 0 else lease.default_ttl
    warnings = None
    if ttl > max_valid_ttl:
        warnings = [formats.ttl_capped_warning(ttl, max_valid_ttl)]
        ttl = max_valid_ttl
    lease.ttl = ttl
    lease.expire_time = now + ttl
    lease.last_renewal = now
    return Reply(
        lease_id=lease.id, renewable=lease.renewable, lease_duration=ttl, warnings=warnings
    )


def revoke(request: Request, url_suffix: str) -> Reply | None:
    """Handle `sys/leases/revoke`: 204, or 202 with `sync=false`; unknown leases are fine."""
    lease_id = _lease_id(request, url_suffix)
    lease = request.state.leases.get(lease_id)
    if lease is not None and lease.namespace == request.namespace.path:
        request.state.revoke_lease(lease)
    sync = formats.parse_bool(request.field("sync", True))
    if sync is False:
        return Reply(status=202, empty=True)
    return None


def revoke_prefix(request: Request, prefix: str) -> None:
    """Handle `sys/leases/revoke-prefix/<prefix>` and `revoke-force/<prefix>` (sudo)."""
    request.require_sudo()
    for lease in list(request.state.leases.values()):
        if lease.namespace == request.namespace.path and lease.id.startswith(prefix):
            request.state.revoke_lease(lease)


def lookup(request: Request) -> Reply:
    """Handle `sys/leases/lookup` with a `lease_id` in the body."""
    lease_id = _lease_id(request, "")
    lease = request.state.leases.get(lease_id)
    if lease is None or lease.namespace != request.namespace.path:
        raise bad_request("invalid lease")
    now = request.state.now()
    return Reply(
        data={
            "expire_time": formats.rfc3339(lease.expire_time),
            "id": lease.id,
            "issue_time": formats.rfc3339(lease.issue_time),
            "last_renewal": (
                formats.rfc3339(lease.last_renewal) if lease.last_renewal is not None else None
            ),
            "renewable": lease.renewable,
            "ttl": max(0, round(lease.expire_time - now)),
        }
    )


def list_leases(request: Request, prefix: str) -> Reply:
    """Handle `LIST sys/leases/lookup/<prefix>` (sudo)."""
    request.require_sudo()
    ids = [
        lease.id
        for lease in request.state.leases.values()
        if lease.namespace == request.namespace.path
    ]
    keys = list_children(ids, list_prefix(prefix))
    if not keys:
        raise not_found()
    return Reply(data={"keys": keys})


def handle_sys_leases(request: Request, route: str) -> Reply | None:
    """Dispatch `sys/leases/<route>` and the legacy `sys/renew`, `sys/revoke` aliases."""
    operation = request.operation
    action, _, suffix = route.partition("/")
    if action == "renew" and operation == UPDATE:
        return renew(request, suffix)
    if action == "revoke" and operation == UPDATE:
        return revoke(request, suffix)
    if action in ("revoke-prefix", "revoke-force") and operation == UPDATE:
        revoke_prefix(request, suffix)
        return None
    if action == "lookup" and operation == UPDATE and not suffix:
        return lookup(request)
    if action == "lookup" and operation == LIST:
        return list_leases(request, suffix)
    if action in ("renew", "revoke", "lookup", "revoke-prefix", "revoke-force"):
        raise unsupported_operation()
    raise unsupported_path()
