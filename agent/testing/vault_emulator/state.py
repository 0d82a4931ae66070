"""The emulator's whole state: clock, namespaces, mounts, tokens, leases, request records.

Guarantees:
- One re-entrant lock (`VaultState.lock`) guards everything. The router takes it for the whole
  of a request, so each request starts from and leaves a consistent state.
- Expiry is exact on the emulator's clock. Every request, `advance()` and every observability
  helper first revokes the tokens and leases whose expire time has passed. A test that advances
  the clock past a TTL therefore observes the revocation at once, without sleeping.
- Revoking a token revokes its child tokens and every lease it created. Revoking a lease runs the
  engine's revoke step (for the database engine, the `on_credentials_revoked` hook).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import formats
from .acl import ACL, DEFAULT_POLICY_RULES, Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator received it. It never contains a token or a secret value."""

    method: str
    path: str
    status: int
    namespace: str
    accessor: str | None
    time: float


@dataclass
class FaultRule:
    remaining: int
    status: int
    path_prefix: str | None

    def matches(self, path: str) -> bool:
        return self.path_prefix is None or path.startswith(self.path_prefix)


@dataclass(frozen=True)
class RoleRef:
    """Location of a login token's role, so renewal can re-read its TTLs."""

    namespace: str
    mount_path: str
    role: str


@dataclass
class Token:
    id: str
    accessor: str
    namespace: str
    policies: list[str]
    display_name: str
    path: str
    meta: dict[str, str] | None
    creation_time: float
    creation_ttl: int
    ttl: int
    expire_time: float | None
    renewable: bool
    orphan: bool
    parent: str | None
    explicit_max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    role: RoleRef | None = None
    last_renewal: float | None = None
    revoked: bool = False

    def live(self, now: float) -> bool:
        return not self.revoked and (self.expire_time is None or now < self.expire_time)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies


@dataclass
class Lease:
    id: str
    namespace: str
    mount_path: str
    role: str
    issue_time: float
    expire_time: float
    ttl: int
    renewable: bool
    token_id: str | None
    # The backend's TTL for renewals without an increment, and the cap counted from issue_time.
    default_ttl: int = 0
    max_ttl: int = 0
    # Called once when the lease is revoked or expires; the engine drops the credential there.
    on_revoke: Callable[[], None] | None = None
    last_renewal: float | None = None


@dataclass
class Mount:
    """A secrets engine or auth method mount. `engine.handle` serves its requests."""

    path: str
    type: str
    engine: Any
    options: dict[str, str] | None = None
    description: str = ""
    default_lease_ttl: int = 0
    max_lease_ttl: int = 0
    accessor: str = ""
    uuid: str = field(default_factory=formats.new_uuid)

    def __post_init__(self) -> None:
        if not self.accessor:
            self.accessor = f"{self.type}_{formats.random_base62(8).lower()}"

    @property
    def effective_default_ttl(self) -> int:
        return self.default_lease_ttl or formats.SYSTEM_DEFAULT_TTL

    @property
    def effective_max_ttl(self) -> int:
        return self.max_lease_ttl or formats.SYSTEM_MAX_TTL

    def describe(self) -> dict[str, Any]:
        """Return the entry `sys/mounts` lists for this mount."""
        return {
            "accessor": self.accessor,
            "config": {
                "default_lease_ttl": self.default_lease_ttl,
                "force_no_cache": False,
                "max_lease_ttl": self.max_lease_ttl,
            },
            "deprecation_status": "supported",
            "description": self.description,
            "external_entropy_access": False,
            "local": False,
            "options": dict(self.options) if self.options is not None else None,
            "plugin_version": "",
            "running_plugin_version": f"v0.0.0+builtin.{self.type}",
            "running_sha256": "",
            "seal_wrap": False,
            "type": self.type,
            "uuid": self.uuid,
        }


@dataclass
class Namespace:
    path: str
    id: str
    mounts: dict[str, Mount] = field(default_factory=dict)
    auth_mounts: dict[str, Mount] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policies.setdefault("default", Policy.from_rules("default", DEFAULT_POLICY_RULES))

    def find_mount(self, path: str) -> Mount | None:
        """Return the secrets mount whose path is the longest prefix of `path`."""
        return _longest_prefix(self.mounts, path)

    def find_auth_mount(self, path: str) -> Mount | None:
        """Return the auth mount for `path`, which is relative to `auth/`."""
        return _longest_prefix(self.auth_mounts, path)


def _longest_prefix(mounts: dict[str, Mount], path: str) -> Mount | None:
    best: Mount | None = None
    for mount_path, mount in mounts.items():
        if (path + "/").startswith(mount_path) and (
            best is None or len(mount_path) > len(best.path)
        ):
            best = mount
    return best


def normalize_namespace(path: str | None) -> str:
    return "/".join(part for part in (path or "").split("/") if part)


class VaultState:
    """Everything the emulated server stores, behind one lock."""

    def __init__(self, *, root_token: str, clock: Callable[[], float] | None = None) -> None:
        self.lock = threading.RLock()
        self._clock = clock or time.time
        self._offset = 0.0
        self.sealed = False
        self.standby = False
        self.version = "1.16.3"
        self.cluster_name = "vault-cluster-" + formats.random_base62(8).lower()
        self.cluster_id = formats.new_uuid()
        self.namespaces: dict[str, Namespace] = {"": Namespace(path="", id="root")}
        self.tokens: dict[str, Token] = {}
        self.leases: dict[str, Lease] = {}
        self.records: list[RequestRecord] = []
        self.faults: list[FaultRule] = []
        self.latency = 0.0
        self.received_jwts: dict[tuple[str, str], list[str]] = {}
        # Logins reject a JWT whose `exp` claim is at or before the emulator's now.
        self.check_jwt_expiry = True
        self.root_token_id = root_token
        self.issue_token(
            namespace=self.namespaces[""],
            policies=["root"],
            ttl=0,
            renewable=False,
            display_name="root",
            path="auth/token/root",
            meta=None,
            parent=None,
            token_id=root_token,
        )

    # -- clock ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the emulator's clock only moves forward")
        with self.lock:
            self._offset += seconds
            self.reap()

    # -- namespaces ----------------------------------------------------------------------------

    def get_namespace(self, path: str, *, create: bool = False) -> Namespace | None:
        path = normalize_namespace(path)
        with self.lock:
            if path in self.namespaces or not create:
                return self.namespaces.get(path)
            parts = path.split("/")
            for depth in range(1, len(parts) + 1):
                prefix = "/".join(parts[:depth])
                if prefix not in self.namespaces:
                    self.namespaces[prefix] = Namespace(path=prefix, id=formats.random_base62(5))
            return self.namespaces[path]

    # -- tokens --------------------------------------------------------------------------------

    def issue_token(
        self,
        *,
        namespace: Namespace,
        policies: list[str],
        ttl: int,
        renewable: bool,
        display_name: str,
        path: str,
        meta: dict[str, str] | None,
        parent: Token | None,
        explicit_max_ttl: int = 0,
        period: int = 0,
        num_uses: int = 0,
        role: RoleRef | None = None,
        token_id: str | None = None,
    ) -> Token:
        """Create and store a token. `ttl` 0 means the token never expires (root tokens only)."""
        with self.lock:
            now = self.now()
            if token_id is None:
                token_id = "hvs." + formats.random_base62(24)
                if namespace.path:
                    token_id += "." + namespace.id
            if token_id in self.tokens:
                raise ValueError("a token with this ID already exists")
            token = Token(
                id=token_id,
                accessor=formats.random_base62(24),
                namespace=namespace.path,
                policies=sorted(set(policies)),
                display_name=display_name,
                path=path,
                meta=meta,
                creation_time=now,
                creation_ttl=ttl,
                ttl=ttl,
                expire_time=now + ttl if ttl > 0 else None,
                renewable=renewable and ttl > 0,
                orphan=parent is None,
                parent=parent.id if parent else None,
                explicit_max_ttl=explicit_max_ttl,
                period=period,
                num_uses=num_uses,
                role=role,
            )
            self.tokens[token_id] = token
            return token

    def lookup_token(self, token_id: str | None) -> Token | None:
        """Return the live token with this ID, or None when it is unknown, expired or revoked."""
        if not token_id:
            return None
        with self.lock:
            token = self.tokens.get(token_id)
            if token is None or not token.live(self.now()):
                return None
            return token

    def revoke_token(self, token: Token) -> None:
        """Revoke a token, its child tokens (recursively) and every lease it created."""
        with self.lock:
            if token.revoked:
                return
            token.revoked = True
            self.tokens.pop(token.id, None)
            for child in [t for t in self.tokens.values() if t.parent == token.id]:
                self.revoke_token(child)
            for lease in [lease for lease in self.leases.values() if lease.token_id == token.id]:
                self.revoke_lease(lease)

    def live_token_count(self, namespace: str) -> int:
        """Count live tokens in a namespace, leaving out the emulator's own root token."""
        namespace = normalize_namespace(namespace)
        with self.lock:
            self.reap()
            return sum(
                1
                for token in self.tokens.values()
                if token.namespace == namespace and token.id != self.root_token_id
            )

    # -- leases --------------------------------------------------------------------------------

    def register_lease(self, lease: Lease) -> Lease:
        with self.lock:
            self.leases[lease.id] = lease
            return lease

    def revoke_lease(self, lease: Lease) -> None:
        with self.lock:
            if self.leases.pop(lease.id, None) is None:
                return
            if lease.on_revoke is None:
                return
            try:
                lease.on_revoke()
            except Exception:
                # Vault retries a failed revocation later; the emulator drops the lease anyway so
                # that one broken hook cannot wedge every later request.
                logger.exception("event=lease_revoke_failed lease_id=%s", lease.id)

    def reap(self) -> None:
        """Revoke every token and lease whose expire time has passed."""
        with self.lock:
            now = self.now()
            for token in list(self.tokens.values()):
                if not token.live(now):
                    self.revoke_token(token)
            for lease in list(self.leases.values()):
                if lease.expire_time <= now:
                    self.revoke_lease(lease)

    # -- ACL -----------------------------------------------------------------------------------

    def acl_for(self, token: Token) -> ACL:
        namespace = self.namespaces.get(token.namespace)
        if namespace is None:
            return ACL()
        policies = [
            namespace.policies[name] for name in token.policies if name in namespace.policies
        ]
        return ACL.from_policies(policies, root=token.is_root)

    def token_reaches(self, token: Token, namespace: Namespace) -> bool:
        """Return whether a token may act in `namespace`: its own or a descendant of it."""
        return (
            token.namespace == namespace.path
            or token.namespace == ""
            or namespace.path.startswith(token.namespace + "/")
        )

    def allowed(
        self, token: Token | None, namespace: Namespace, path: str, capability: str
    ) -> bool:
        """Check `capability` on `path` (relative to `namespace`) for `token`."""
        if token is None or not self.token_reaches(token, namespace):
            return False
        # A parent-namespace token's policies name child-namespace paths with the child's prefix.
        relative = namespace.path[len(token.namespace) :].strip("/")
        full_path = f"{relative}/{path}" if relative else path
        return self.acl_for(token).allows(full_path, capability)

    # -- observability -------------------------------------------------------------------------

    def record(self, record: RequestRecord) -> None:
        with self.lock:
            self.records.append(record)

    def take_fault(self, path: str) -> FaultRule | None:
        with self.lock:
            for rule in self.faults:
                if rule.remaining > 0 and rule.matches(path):
                    rule.remaining -= 1
                    return rule
            self.faults = [rule for rule in self.faults if rule.remaining > 0]
            return None
