"""The `sys/` backend: health, seal status, mounts, auth methods, policies, leases, namespaces.

`sys/health`, `sys/seal-status`, `sys/init` and `sys/leader` respond with plain JSON bodies and
need no token; every other route uses the success envelope. The listing routes that Vault
duplicates at the top level of the body (`sys/mounts`, `sys/auth`, `sys/policy`,
`sys/capabilities*`) are duplicated here too.
"""

from __future__ import annotations

from typing import Any

from . import formats, leases
from .acl import PolicyError, parse_policy_text
from .kv import KV1Engine, KV2Engine
from .leases import CredentialHooks, DatabaseEngine
from .logins import LOGIN_ENGINES
from .protocol import (
    DELETE,
    HEADER,
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
from .state import Mount, Namespace, Token, VaultState, normalize_namespace

# Routes that respond without a token and while sealed.
OPEN_ROUTES = frozenset({"health", "seal-status", "init", "leader", "unseal"})

_HEALTH_CODE_PARAMETERS = (
    "activecode",
    "standbycode",
    "drsecondarycode",
    "performancestandbycode",
    "sealedcode",
    "uninitcode",
)


def make_secrets_engine(mount_type: str, options: dict[str, Any] | None, hooks: CredentialHooks):
    """Create the engine for a `sys/mounts` type; raise ValueError for an unsupported one."""
    version = str((options or {}).get("version") or "1")
    if mount_type == "kv-v2" or (mount_type == "kv" and version == "2"):
        return KV2Engine(), {"version": "2"}
    if mount_type in ("kv", "generic"):
        if version not in ("1", ""):
            raise ValueError(f"unsupported KV version {version!r}")
        return KV1Engine(), {"version": "1"}
    if mount_type == "database":
        return DatabaseEngine(hooks), None
    raise ValueError(f"plugin not found in the catalog: {mount_type}")


def mount_secrets_engine(
    namespace: Namespace,
    path: str,
    mount_type: str,
    *,
    options: dict[str, Any] | None,
    hooks: CredentialHooks,
    description: str = "",
) -> Mount:
    """Mount a secrets engine at `path`; raise ValueError when the path is taken or invalid."""
    path = path.strip("/") + "/"
    if path == "/" or path.split("/")[0] in ("sys", "auth", "cubbyhole", "identity"):
        raise ValueError(f'cannot mount at reserved path "{path}"')
    for existing in namespace.mounts:
        if existing.startswith(path) or path.startswith(existing):
            raise ValueError(f"path is already in use at {existing}")
    engine, engine_options = make_secrets_engine(mount_type, options, hooks)
    kv_type = "kv" if mount_type in ("kv-v2", "generic") else mount_type
    mount = Mount(
        path=path,
        type=kv_type,
        engine=engine,
        options=engine_options,
        description=description or ("key/value secret storage" if kv_type == "kv" else ""),
    )
    engine.mount = mount
    namespace.mounts[path] = mount
    return mount


def mount_auth_method(namespace: Namespace, path: str, method_type: str) -> Mount:
    path = path.strip("/") + "/"
    if path == "token/":
        raise ValueError('cannot mount at reserved path "token/"')
    if path in namespace.auth_mounts:
        raise ValueError(f"path is already in use at auth/{path}")
    engine_class = LOGIN_ENGINES.get(method_type)
    if engine_class is None:
        raise ValueError(f"plugin not found in the catalog: {method_type}")
    mount = Mount(path=path, type=method_type, engine=engine_class(), accessor="")
    mount.accessor = f"auth_{method_type}_{formats.random_base62(8).lower()}"
    namespace.auth_mounts[path] = mount
    return mount


def _builtin_mounts() -> dict[str, dict[str, Any]]:
    def entry(mount_type: str, description: str) -> dict[str, Any]:
        return Mount(path="", type=mount_type, engine=None, description=description).describe()

    return {
        "cubbyhole/": entry("cubbyhole", "per-token private secret storage"),
        "identity/": entry("identity", "identity store"),
        "sys/": entry("system", "system endpoints used for control, policy and debugging"),
    }


def _token_auth_mount() -> dict[str, Any]:
    return Mount(
        path="token/", type="token", engine=None, description="token based credentials"
    ).describe()


class SystemEngine(Engine):
    type = "system"

    def __init__(self, hooks: CredentialHooks) -> None:
        self.hooks = hooks

    def unauthenticated(self, rest: str) -> bool:
        return rest in OPEN_ROUTES or rest == "internal/ui/mounts"

    def capability(self, request: Request) -> str | None:
        if request.rest.startswith("internal/ui/mounts/"):
            return None
        return super().capability(request)

    def handle(self, request: Request) -> Reply | None:
        rest = request.rest
        head, _, tail = rest.partition("/")

        if rest == "health":
            return self._health(request)
        if rest == "seal-status" and request.operation == READ:
            return Reply(raw=seal_status(request.state))
        if rest == "init" and request.operation == READ:
            return Reply(raw={"initialized": True})
        if rest == "leader" and request.operation == READ:
            return Reply(raw=_leader())
        if rest == "unseal" and request.operation == UPDATE:
            request.state.sealed = False
            return Reply(raw=seal_status(request.state))
        if rest == "seal" and request.operation == UPDATE:
            request.require_sudo()
            request.state.sealed = True
            return None

        if head == "mounts":
            return self._mounts(request, tail)
        if head == "auth":
            return self._auth(request, tail)
        if rest == "internal/ui/mounts" or rest.startswith("internal/ui/mounts/"):
            return self._ui_mounts(request, rest[len("internal/ui/mounts") :].strip("/"))
        if head in ("policy", "policies"):
            return self._policies(request, rest)

        if head == "leases":
            return leases.handle_sys_leases(request, tail)
        if head in ("renew", "revoke"):
            return leases.handle_sys_leases(request, rest)
        if head in ("capabilities-self", "capabilities"):
            return self._capabilities(request)
        if head == "namespaces":
            return self._namespaces(request, tail)
        raise unsupported_path()

    # -- health and seal -----------------------------------------------------------------------

    def _health(self, request: Request) -> Reply:
        if request.operation not in (READ, HEADER):
            raise unsupported_operation()
        state = request.state
        codes = {"activecode": 200, "standbycode": 429, "sealedcode": 503}
        for name in _HEALTH_CODE_PARAMETERS:
            if name in request.query:
                try:
                    codes[name] = int(request.query[name])
                except ValueError:
                    raise VaultHTTPError(400) from None
        standby_ok = formats.parse_bool(request.query.get("standbyok", "false")) is True
        if state.sealed:
            status = codes["sealedcode"]
        elif state.standby and not standby_ok:
            status = codes["standbycode"]
        else:
            status = codes["activecode"]
        body: dict[str, Any] = {
            "initialized": True,
            "sealed": state.sealed,
            "standby": state.standby,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(state.now()),
            "version": state.version,
        }
        if not state.sealed:
            body["cluster_name"] = state.cluster_name
            body["cluster_id"] = state.cluster_id
        return Reply(status=status, raw=body, empty=request.operation == HEADER)

    # -- mounts --------------------------------------------------------------------------------

    def _mounts(self, request: Request, path: str) -> Reply | None:
        namespace = request.namespace
        operation = request.operation
        if not path:
            if operation != READ:
                raise unsupported_operation()
            listing = _builtin_mounts()
            for mount_path, mount in sorted(namespace.mounts.items()):
                listing[mount_path] = mount.describe()
            return Reply(data=listing, data_at_top_level=True)
        mount_path = path.strip("/")
        if mount_path.endswith("/tune"):
            return self._tune(request, mount_path[: -len("/tune")])
        mount = namespace.mounts.get(mount_path + "/")
        if operation == READ:
            if mount is None:
                raise bad_request(f"No secret engine mount at {mount_path}/")
            return Reply(data=mount.describe(), data_at_top_level=True)
        if operation == UPDATE:
            mount_type = request.field("type")
            if not mount_type:
                raise bad_request("backend type must be specified as a string")
            try:
                mount_secrets_engine(
                    namespace,
                    mount_path,
                    str(mount_type),
                    options=request.field("options"),
                    hooks=self.hooks,
                    description=str(request.field("description", "")),
                )
            except ValueError as error:
                raise bad_request(str(error)) from None
            return None
        if operation == DELETE:
            if mount is not None:
                for lease in list(request.state.leases.values()):
                    if lease.namespace == namespace.path and lease.mount_path == mount.path:
                        request.state.revoke_lease(lease)
                del namespace.mounts[mount.path]
            return None
        raise unsupported_operation()

    def _tune(self, request: Request, mount_path: str) -> Reply | None:
        mount = request.namespace.mounts.get(mount_path + "/")
        if mount is None:
            raise bad_request(f"no mount entry found for path {mount_path}/")
        if request.operation == READ:
            return Reply(
                data={
                    "default_lease_ttl": mount.effective_default_ttl,
                    "max_lease_ttl": mount.effective_max_ttl,
                    "force_no_cache": False,
                    "description": mount.description,
                    "options": mount.options,
                }
            )
        if request.operation == UPDATE:
            try:
                if request.field("default_lease_ttl") is not None:
                    mount.default_lease_ttl = formats.parse_duration(
                        request.field("default_lease_ttl")
                    )
                if request.field("max_lease_ttl") is not None:
                    mount.max_lease_ttl = formats.parse_duration(request.field("max_lease_ttl"))
            except formats.DurationError as error:
                raise bad_request(str(error)) from None
            return None
        raise unsupported_operation()

    def _auth(self, request: Request, path: str) -> Reply | None:
        namespace = request.namespace
        if not path:
            if request.operation != READ:
                raise unsupported_operation()
            listing = {"token/": _token_auth_mount()}
            for mount_path, mount in sorted(namespace.auth_mounts.items()):
                listing[mount_path] = mount.describe()
            return Reply(data=listing, data_at_top_level=True)
        mount_path = path.strip("/")
        if request.operation == UPDATE:
            method_type = request.field("type")
            if not method_type:
                raise bad_request("backend type must be specified as a string")
            try:
                mount_auth_method(namespace, mount_path, str(method_type))
            except ValueError as error:
                raise bad_request(str(error)) from None
            return None
        if request.operation == DELETE:
            mount = namespace.auth_mounts.pop(mount_path + "/", None)
            if mount is not None:
                prefix = f"auth/{mount.path}"
                for token in list(request.state.tokens.values()):
                    if token.namespace == namespace.path and token.path.startswith(prefix):
                        request.state.revoke_token(token)
            return None
        if request.operation == READ:
            mount = namespace.auth_mounts.get(mount_path + "/")
            if mount is None:
                raise bad_request(f"No auth engine at {mount_path}/")
            return Reply(data=mount.describe(), data_at_top_level=True)
        raise unsupported_operation()

    def _ui_mounts(self, request: Request, path: str) -> Reply:
        namespace = request.namespace
        if not path:
            # Without a token only mounts with listing_visibility=unauth are shown; none here.
            if request.token is None:
                return Reply(data={"secret": {}, "auth": {}})
            acl = request.state.acl_for(request.token)
            secret = {
                mount_path: mount.describe()
                for mount_path, mount in sorted(namespace.mounts.items())
                if acl.has_access_under(mount_path)
            }
            auth = {
                f"{mount_path}": mount.describe()
                for mount_path, mount in sorted(namespace.auth_mounts.items())
                if acl.has_access_under("auth/" + mount_path)
            }
            return Reply(data={"secret": secret, "auth": auth})
        mount = namespace.find_mount(path)
        token = request.token
        acl = request.state.acl_for(token) if token else None
        if (
            mount is None
            or acl is None
            or not request.state.token_reaches(token, namespace)
            or not acl.has_access_under(_relative_to_token(request, mount.path))
        ):
            raise VaultHTTPError(
                403,
                "preflight capability check returned 403, please ensure client's policies grant "
                f'access to path "{path.rstrip("/")}/"',
            )
        data = mount.describe()
        data["path"] = mount.path
        return Reply(data=data)

    # -- policies, capabilities, namespaces ----------------------------------------------------

    def _policies(self, request: Request, rest: str) -> Reply | None:
        namespace = request.namespace
        if rest in ("policy", "policies/acl"):
            if request.operation not in (READ, LIST):
                raise unsupported_operation()
            names = sorted(set(namespace.policies) | {"root"})
            data = {"keys": names, "policies": names} if rest == "policy" else {"keys": names}
            return Reply(data=data, data_at_top_level=rest == "policy")
        prefix = "policy/" if rest.startswith("policy/") else "policies/acl/"
        if not rest.startswith(prefix):
            raise unsupported_path()
        name = rest[len(prefix) :].lower()
        if request.operation == READ:
            if name == "root":
                return Reply(data={"name": "root", "rules": "", "policy": ""})
            policy = namespace.policies.get(name)
            if policy is None:
                raise not_found()
            data = {"name": name, "rules": policy.text, "policy": policy.text}
            return Reply(data=data, data_at_top_level=True)
        if request.operation == UPDATE:
            if name == "root":
                raise bad_request("cannot update root policy")
            text = request.field("policy", request.field("rules"))
            if text is None:
                raise bad_request("'policy' parameter not supplied or empty")
            try:
                namespace.policies[name] = parse_policy_text(name, str(text))
            except PolicyError as error:
                raise bad_request(str(error)) from None
            return None
        if request.operation == DELETE:
            if name in ("root", "default"):
                raise bad_request(f"cannot delete {name} policy")
            namespace.policies.pop(name, None)
            return None
        raise unsupported_operation()

    def _capabilities(self, request: Request) -> Reply:
        if request.operation != UPDATE:
            raise unsupported_operation()
        paths = formats.string_list(request.field("paths", request.field("path")))
        if not paths:
            raise bad_request("missing paths")
        token = request.token
        if request.rest.startswith("capabilities-self") or token is None:
            target = token
        else:
            target = request.state.lookup_token(request.field("token"))
            if target is None:
                raise bad_request("invalid token")
        data: dict[str, Any] = {}
        for path in paths:
            if target is None:
                data[path] = ["deny"]
                continue
            relative = _relative_to_token_id(request.state, target, request.namespace, path)
            granted = request.state.acl_for(target).capabilities(relative)
            if target.is_root:
                data[path] = ["root"]
            elif not granted or "deny" in granted:
                data[path] = ["deny"]
            else:
                data[path] = sorted(granted)
        if len(paths) == 1:
            data["capabilities"] = data[paths[0]]
        return Reply(data=data, data_at_top_level=True)

    def _namespaces(self, request: Request, path: str) -> Reply | None:
        state = request.state
        base = request.namespace.path
        if not path:
            if request.operation != LIST:
                raise unsupported_operation()
            children = sorted(
                ns[len(base) :].strip("/") + "/"
                for ns in state.namespaces
                if ns
                and ns != base
                and ns.startswith(base)
                and "/" not in ns[len(base) :].strip("/")
            )
            if not children:
                raise not_found()
            return Reply(data={"keys": children})
        full = normalize_namespace(f"{base}/{path}")
        if request.operation == UPDATE:
            namespace = state.get_namespace(full, create=True)
            return Reply(data={"id": namespace.id, "path": namespace.path + "/"})
        if request.operation == READ:
            namespace = state.namespaces.get(full)
            if namespace is None:
                raise not_found()
            return Reply(data={"id": namespace.id, "path": namespace.path + "/"})
        raise unsupported_operation()


def seal_status(state: VaultState) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "shamir",
        "initialized": True,
        "sealed": state.sealed,
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": state.version,
        "build_date": "2024-01-01T00:00:00Z",
        "migration": False,
        "recovery_seal": False,
        "storage_type": "inmem",
    }
    if not state.sealed:
        body["cluster_name"] = state.cluster_name
        body["cluster_id"] = state.cluster_id
    return body


def _leader() -> dict[str, Any]:
    return {
        "ha_enabled": False,
        "is_self": False,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": "",
        "leader_cluster_address": "",
        "performance_standby": False,
        "performance_standby_last_remote_wal": 0,
    }


def _relative_to_token(request: Request, path: str) -> str:
    assert request.token is not None
    return _relative_to_token_id(request.state, request.token, request.namespace, path)


def _relative_to_token_id(state: VaultState, token: Token, namespace: Namespace, path: str) -> str:
    relative = namespace.path[len(token.namespace) :].strip("/")
    return f"{relative}/{path}" if relative else path
