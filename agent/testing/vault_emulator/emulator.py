"""`VaultEmulator`: the in-process Vault server that tests, the demo and benchmarks start.

Guarantees:
- hvac cannot tell it from Vault for the features listed in the package docstring: same routes,
  envelopes, error bodies, status codes and `Content-Type`, over a real socket (HTTP or HTTPS).
- Set-up helpers (`kv_put`, `set_policy`, `add_kubernetes_role`...) change the state directly,
  without going through HTTP, so they leave no request record.
- Observability helpers never return token IDs or secret values, except `create_token`, which
  returns the token it made so the test can hand it to the code under test.
- Time is the emulator's clock (`now()`), real time plus whatever `advance()` added, or a
  `clock` callable given at construction plus that offset.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .acl import Policy
from .kv import KV1Engine, KV2Engine
from .leases import CredentialHooks, CredentialsCreatedHook, CredentialsRevokedHook, DatabaseRole
from .logins import AppRole, AppRoleEngine, JWTRole, KubernetesRole, LoginEngine
from .router import Router
from .server import HTTPServerThread
from .state import FaultRule, Mount, Namespace, RequestRecord, VaultState, normalize_namespace
from .system import mount_auth_method, mount_secrets_engine

SEED_KEYS = (
    "namespaces",
    "enable_kv",
    "enable_database",
    "set_policy",
    "kv_put",
    "add_kubernetes_role",
    "add_approle",
    "add_jwt_role",
    "add_database_role",
    "create_token",
)


def _normalize_prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    prefix = prefix.lstrip("/")
    return prefix[len("v1/") :] if prefix.startswith("v1/") else prefix


class VaultEmulator:
    """An HTTP server that responds like HashiCorp Vault, with helpers to set up and observe it.

    `secret/` is a KV version 2 mount from the start, as on a Vault dev server.
    """

    def __init__(
        self, *, root_token: str = "root-token-fake", clock: Callable[[], float] | None = None
    ) -> None:
        self.root_token = root_token
        self.url = ""
        self._hooks = CredentialHooks()
        self._state = VaultState(root_token=root_token, clock=clock)
        self._router = Router(self._state, self._hooks)
        self._server: HTTPServerThread | None = None
        self.enable_kv("secret", version=2)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> str:
        """Listen on `host:port` (0 picks a free port), with TLS when given a cert and key.

        Returns the base URL, such as `http://127.0.0.1:54321`. Only loopback hosts are allowed.
        """
        if self._server is not None:
            raise RuntimeError("the emulator is already running at " + self.url)
        if bool(certfile) != bool(keyfile):
            raise ValueError("TLS needs both certfile and keyfile")
        self._server = HTTPServerThread(
            self._router, host=host, port=port, certfile=certfile, keyfile=keyfile
        )
        self.url = self._server.url
        return self.url

    def stop(self) -> None:
        """Stop listening and cut open connections. State is kept; `start()` may be called again."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> VaultEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- time, seal, standby -------------------------------------------------------------------

    def now(self) -> float:
        return self._state.now()

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward and revoke whatever expired on the way."""
        self._state.advance(seconds)

    def seal(self) -> None:
        with self._state.lock:
            self._state.sealed = True

    def unseal(self) -> None:
        with self._state.lock:
            self._state.sealed = False

    @property
    def sealed(self) -> bool:
        return self._state.sealed

    def set_standby(self, standby: bool) -> None:
        """Make `sys/health` report a standby node (429 by default). Other routes still respond."""
        with self._state.lock:
            self._state.standby = standby

    # -- namespaces and mounts -----------------------------------------------------------------

    def create_namespace(self, path: str) -> None:
        """Create a namespace (and its parents). Other helpers create them on first use too."""
        self._namespace(path)

    def _namespace(self, path: str) -> Namespace:
        namespace = self._state.get_namespace(path, create=True)
        assert namespace is not None
        return namespace

    def enable_kv(self, mount: str, *, version: int = 2, namespace: str = "") -> None:
        """Mount a KV engine of `version` 1 or 2 at `mount` (any depth, such as `team/kv`)."""
        if version not in (1, 2):
            raise ValueError(f"KV version must be 1 or 2, not {version!r}")
        with self._state.lock:
            mount_secrets_engine(
                self._namespace(namespace),
                mount,
                "kv",
                options={"version": str(version)},
                hooks=self._hooks,
            )

    def enable_database(self, mount: str = "database", *, namespace: str = "") -> None:
        with self._state.lock:
            mount_secrets_engine(
                self._namespace(namespace), mount, "database", options=None, hooks=self._hooks
            )

    def _mount(self, mount: str, namespace: str) -> Mount:
        found = self._namespace(namespace).mounts.get(mount.strip("/") + "/")
        if found is None:
            raise KeyError(f"no secrets engine is mounted at {mount!r} in namespace {namespace!r}")
        return found

    # -- KV ------------------------------------------------------------------------------------

    def kv_put(self, mount: str, path: str, data: Mapping[str, Any], *, namespace: str = "") -> int:
        """Write `data` at `path`; return the new version (always 1 on a KV v1 mount)."""
        with self._state.lock:
            engine = self._mount(mount, namespace).engine
            if isinstance(engine, KV2Engine):
                return engine.put(path, dict(data), now=self._state.now())
            if isinstance(engine, KV1Engine):
                return engine.put(path, dict(data))
            raise TypeError(f"mount {mount!r} is not a KV mount")

    def kv_delete(
        self,
        mount: str,
        path: str,
        *,
        versions: list[int] | None = None,
        namespace: str = "",
    ) -> None:
        """Soft-delete versions of a KV v2 secret (the current one by default); on v1, remove it."""
        with self._state.lock:
            engine = self._mount(mount, namespace).engine
            if isinstance(engine, KV2Engine):
                engine.soft_delete(path, versions, now=self._state.now())
            elif isinstance(engine, KV1Engine):
                engine.entries.pop(path, None)
            else:
                raise TypeError(f"mount {mount!r} is not a KV mount")

    def kv_undelete(
        self, mount: str, path: str, *, versions: list[int], namespace: str = ""
    ) -> None:
        with self._state.lock:
            self._kv2(mount, namespace).undelete(path, versions)

    def kv_destroy(
        self, mount: str, path: str, *, versions: list[int], namespace: str = ""
    ) -> None:
        """Destroy versions of a KV v2 secret: their data is gone for good."""
        with self._state.lock:
            self._kv2(mount, namespace).destroy(path, versions)

    def kv_configure(
        self,
        mount: str,
        *,
        max_versions: int | None = None,
        cas_required: bool | None = None,
        delete_version_after: int | None = None,
        namespace: str = "",
    ) -> None:
        """Set a KV v2 mount's config (`max_versions`, `cas_required`, `delete_version_after` s)."""
        with self._state.lock:
            config = self._kv2(mount, namespace).config
            if max_versions is not None:
                config.max_versions = max_versions
            if cas_required is not None:
                config.cas_required = cas_required
            if delete_version_after is not None:
                config.delete_version_after = delete_version_after

    def _kv2(self, mount: str, namespace: str) -> KV2Engine:
        engine = self._mount(mount, namespace).engine
        if not isinstance(engine, KV2Engine):
            raise TypeError(f"mount {mount!r} is not a KV version 2 mount")
        return engine

    # -- policies and tokens -------------------------------------------------------------------

    def set_policy(
        self, name: str, rules: Mapping[str, Iterable[str]], *, namespace: str = ""
    ) -> None:
        """Create or replace an ACL policy, e.g. `{"secret/data/app/*": ["read"]}`."""
        if name == "root":
            raise ValueError("the root policy cannot be changed")
        policy = Policy.from_rules(name, rules)
        with self._state.lock:
            self._namespace(namespace).policies[name] = policy

    def create_token(
        self,
        *,
        policies: Iterable[str] = ("default",),
        ttl: int = 3600,
        max_ttl: int = 0,
        renewable: bool = True,
        namespace: str = "",
        num_uses: int = 0,
        period: int = 0,
        token_id: str | None = None,
        no_default_policy: bool = False,
    ) -> str:
        """Create an orphan service token and return it.

        As in Vault, `default` is added to the policies unless `no_default_policy` is set or the
        token has `root`. `ttl` 0 makes a token that never expires; `max_ttl` is its
        `explicit_max_ttl`.
        """
        granted = list(policies)
        if "root" in granted:
            granted = ["root"]
        elif not no_default_policy:
            granted.append("default")
        with self._state.lock:
            token = self._state.issue_token(
                namespace=self._namespace(namespace),
                policies=granted,
                ttl=period or ttl,
                renewable=renewable,
                display_name="token",
                path="auth/token/create",
                meta=None,
                parent=None,
                explicit_max_ttl=max_ttl,
                period=period,
                num_uses=num_uses,
                token_id=token_id,
            )
            return token.id

    def revoke_token(self, token: str) -> None:
        """Revoke a token, its children and its leases, as if it had expired."""
        with self._state.lock:
            found = self._state.tokens.get(token)
            if found is not None:
                self._state.revoke_token(found)

    def token_ttl(self, token: str) -> float | None:
        """Return the seconds a live token has left, None for a never-expiring one.

        Raises KeyError when the token is unknown, expired or revoked.
        """
        with self._state.lock:
            found = self._state.lookup_token(token)
            if found is None:
                raise KeyError("token is not live")
            if found.expire_time is None:
                return None
            return found.expire_time - self._state.now()

    # -- auth methods --------------------------------------------------------------------------

    def enable_auth(
        self, method_type: str, *, mount: str | None = None, namespace: str = ""
    ) -> None:
        """Mount an auth method (`kubernetes`, `approle`, `jwt`) at `mount` (default: its type)."""
        with self._state.lock:
            mount_auth_method(self._namespace(namespace), mount or method_type, method_type)

    def _login_engine(self, method_type: str, mount: str, namespace: str) -> LoginEngine:
        ns = self._namespace(namespace)
        key = mount.strip("/") + "/"
        if key not in ns.auth_mounts:
            mount_auth_method(ns, mount, method_type)
        auth_mount = ns.auth_mounts[key]
        if auth_mount.type != method_type:
            raise ValueError(f"auth/{key} is a {auth_mount.type} mount, not {method_type}")
        return auth_mount.engine

    def add_kubernetes_role(
        self,
        role: str,
        *,
        bound_service_account_names: list[str],
        bound_service_account_namespaces: list[str],
        policies: list[str],
        ttl: int = 3600,
        max_ttl: int = 0,
        mount: str = "kubernetes",
        namespace: str = "",
        audience: str | None = None,
    ) -> None:
        """Add a Kubernetes auth role. Names and namespaces accept `*` globs, as in Vault."""
        if not bound_service_account_names or not bound_service_account_namespaces:
            raise ValueError("bound service account names and namespaces must not be empty")
        with self._state.lock:
            engine = self._login_engine("kubernetes", mount, namespace)
            engine.roles[role] = KubernetesRole(
                name=role,
                policies=list(policies),
                ttl=ttl,
                max_ttl=max_ttl,
                bound_service_account_names=list(bound_service_account_names),
                bound_service_account_namespaces=list(bound_service_account_namespaces),
                audience=audience,
            )

    def add_approle(
        self,
        role: str,
        *,
        role_id: str,
        secret_id: str,
        policies: list[str],
        ttl: int = 3600,
        max_ttl: int = 0,
        mount: str = "approle",
        namespace: str = "",
    ) -> None:
        """Add an AppRole role that accepts exactly this role_id and secret_id."""
        with self._state.lock:
            engine = self._login_engine("approle", mount, namespace)
            assert isinstance(engine, AppRoleEngine)
            approle = AppRole(
                name=role, policies=list(policies), ttl=ttl, max_ttl=max_ttl, role_id=role_id
            )
            engine.roles[role] = approle
            engine.add_secret_id(approle, secret_id, now=self._state.now())

    def add_jwt_role(
        self,
        role: str,
        *,
        policies: list[str],
        bound_audiences: Iterable[str] = (),
        user_claim: str = "sub",
        bound_subject: str = "",
        bound_claims: Mapping[str, Any] | None = None,
        ttl: int = 3600,
        max_ttl: int = 0,
        mount: str = "jwt",
        namespace: str = "",
    ) -> None:
        """Add a JWT auth role; the JWT's signature is not checked, only its claims."""
        with self._state.lock:
            engine = self._login_engine("jwt", mount, namespace)
            engine.roles[role.lower()] = JWTRole(
                name=role.lower(),
                policies=list(policies),
                ttl=ttl,
                max_ttl=max_ttl,
                user_claim=user_claim,
                bound_audiences=list(bound_audiences),
                bound_subject=bound_subject,
                bound_claims=dict(bound_claims or {}),
            )

    @property
    def check_jwt_expiry(self) -> bool:
        """Whether logins reject a JWT whose `exp` claim has passed on the emulator's clock.

        On by default, as in Vault. A test that advances the clock by hours while reusing a
        JWT minted in real time can turn it off.
        """
        return self._state.check_jwt_expiry

    @check_jwt_expiry.setter
    def check_jwt_expiry(self, enabled: bool) -> None:
        self._state.check_jwt_expiry = enabled

    def reject_jwt(self, jwt: str, *, mount: str = "kubernetes", namespace: str = "") -> None:
        """Make Kubernetes logins with this JWT fail 403, as a failed TokenReview does in Vault."""
        with self._state.lock:
            self._login_engine("kubernetes", mount, namespace).rejected_jwts.add(jwt)

    def received_jwts(self, *, mount: str = "kubernetes", namespace: str = "") -> list[str]:
        """Return the JWTs logins on this mount received, oldest first."""
        key = (normalize_namespace(namespace), mount.strip("/") + "/")
        with self._state.lock:
            return list(self._state.received_jwts.get(key, []))

    # -- database engine and leases ------------------------------------------------------------

    def add_database_role(
        self,
        role: str,
        *,
        default_ttl: int,
        max_ttl: int,
        mount: str = "database",
        namespace: str = "",
        renewable: bool = True,
    ) -> None:
        """Add a database role; mounts the database engine at `mount` when needed.

        `renewable=False` makes its leases non-renewable, as AWS STS credentials are in Vault.
        """
        with self._state.lock:
            ns = self._namespace(namespace)
            if mount.strip("/") + "/" not in ns.mounts:
                mount_secrets_engine(ns, mount, "database", options=None, hooks=self._hooks)
            engine = self._mount(mount, namespace).engine
            engine.roles[role] = DatabaseRole(
                name=role, default_ttl=default_ttl, max_ttl=max_ttl, renewable=renewable
            )

    @property
    def on_credentials_created(self) -> CredentialsCreatedHook | None:
        """Called as `hook(role, username, password, ttl)` before credentials are returned.

        If it raises, the creds request fails with 500 and no lease is made.
        """
        return self._hooks.on_credentials_created

    @on_credentials_created.setter
    def on_credentials_created(self, hook: CredentialsCreatedHook | None) -> None:
        self._hooks.on_credentials_created = hook

    @property
    def on_credentials_revoked(self) -> CredentialsRevokedHook | None:
        """Called as `hook(username)` when a lease is revoked or expires, with the state locked."""
        return self._hooks.on_credentials_revoked

    @on_credentials_revoked.setter
    def on_credentials_revoked(self, hook: CredentialsRevokedHook | None) -> None:
        self._hooks.on_credentials_revoked = hook

    def database_credentials_valid(
        self, username: str, password: str, *, mount: str = "database", namespace: str = ""
    ) -> bool:
        """Return whether this username/password pair is issued and its lease not yet revoked."""
        with self._state.lock:
            self._state.reap()
            users = self._mount(mount, namespace).engine.users
            return users.get(username) == password

    def live_leases(self) -> list[str]:
        """Return the IDs of leases not yet revoked or expired, in every namespace, sorted."""
        with self._state.lock:
            self._state.reap()
            return sorted(self._state.leases)

    def lease_ttl(self, lease_id: str) -> float:
        """Return the seconds a live lease has left; KeyError when it is gone."""
        with self._state.lock:
            self._state.reap()
            lease = self._state.leases[lease_id]
            return lease.expire_time - self._state.now()

    def revoke_lease(self, lease_id: str) -> None:
        with self._state.lock:
            lease = self._state.leases.get(lease_id)
            if lease is not None:
                self._state.revoke_lease(lease)

    # -- faults and observability --------------------------------------------------------------

    def fail_next(self, count: int, *, status: int = 503, path_prefix: str | None = None) -> None:
        """Fail the next `count` requests whose path starts with `path_prefix` with `status`.

        The path is Vault's (`secret/data/app`, with or without a leading `/v1/`); None matches
        every request. Bodies are Vault's for that status (503 "Vault is sealed", 429 quota...).
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._state.lock:
            rule = FaultRule(
                remaining=count, status=status, path_prefix=_normalize_prefix(path_prefix)
            )
            self._state.faults.append(rule)

    @property
    def latency(self) -> float:
        """Seconds every request waits before it is handled (real time, not the emulator clock)."""
        return self._state.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._state.latency = seconds

    @property
    def requests(self) -> list[RequestRecord]:
        """Return a copy of the request records, oldest first.

        Records accumulate for the emulator's lifetime (about 320 bytes each), so a long
        benchmark should call `clear_requests()` between rounds.
        """
        with self._state.lock:
            return list(self._state.records)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.records.clear()

    def count(self, *, method: str | None = None, path_prefix: str | None = None) -> int:
        """Count recorded requests by HTTP method and/or Vault path prefix (see `fail_next`)."""
        prefix = _normalize_prefix(path_prefix)
        with self._state.lock:
            return sum(
                1
                for record in self._state.records
                if (method is None or record.method == method.upper())
                and (prefix is None or record.path.startswith(prefix))
            )

    def live_tokens(self, *, namespace: str = "") -> int:
        """Count live tokens in `namespace`, not counting the emulator's root token."""
        return self._state.live_token_count(namespace)

    # -- seed ----------------------------------------------------------------------------------

    def apply_seed(self, seed: Mapping[str, Any]) -> None:
        """Apply a seed document: each key names a helper and contains a list of its keyword args.

        Keys: namespaces (a list of paths) and enable_kv, enable_database, set_policy, kv_put,
        add_kubernetes_role, add_approle, add_jwt_role, add_database_role, create_token. They
        run in that order whatever the order in the document.
        """
        unknown = set(seed) - set(SEED_KEYS)
        if unknown:
            raise ValueError(f"unknown seed keys {sorted(unknown)}; expected some of {SEED_KEYS}")
        for path in seed.get("namespaces", []):
            self.create_namespace(path)
        for key in SEED_KEYS[1:]:
            helper = getattr(self, key)
            for index, arguments in enumerate(seed.get(key, [])):
                if not isinstance(arguments, dict):
                    raise ValueError(f"seed {key}[{index}] must be an object of keyword arguments")
                try:
                    inspect.signature(helper).bind(**arguments)
                except TypeError as error:
                    raise ValueError(f"seed {key}[{index}]: {error}") from None
                helper(**arguments)
