"""Login auth methods: Kubernetes, AppRole and JWT, each mountable at any path.

A login returns an orphan service token whose TTL is the role's `ttl` (the system default 768h
when 0), capped at the role's `max_ttl`. Renewals re-read the role, as Vault's plugins do.
JWTs are decoded without checking the signature, because the emulator has no Kubernetes API to
send a TokenReview to and no issuer keys. It checks only claims (subject, expiry, audience,
bound claims). Every JWT a login receives is recorded in `VaultState.received_jwts` so tests can
tell whether a rotated token file was read again.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from . import formats
from .protocol import (
    DELETE,
    LIST,
    PERMISSION_DENIED,
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
from .state import RoleRef
from .tokens import auth_block


@dataclass
class LoginRole:
    """TTL and policy settings shared by every login role."""

    name: str
    policies: list[str] = field(default_factory=list)
    ttl: int = 0
    max_ttl: int = 0
    period: int = 0
    no_default_policy: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "token_policies": list(self.policies),
            "policies": list(self.policies),
            "token_ttl": self.ttl,
            "ttl": self.ttl,
            "token_max_ttl": self.max_ttl,
            "max_ttl": self.max_ttl,
            "token_period": self.period,
            "period": self.period,
            "token_no_default_policy": self.no_default_policy,
            "token_type": "default",
        }


@dataclass
class KubernetesRole(LoginRole):
    bound_service_account_names: list[str] = field(default_factory=list)
    bound_service_account_namespaces: list[str] = field(default_factory=list)
    audience: str | None = None

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["bound_service_account_names"] = list(self.bound_service_account_names)
        described["bound_service_account_namespaces"] = list(self.bound_service_account_namespaces)
        described["audience"] = self.audience or ""
        return described


@dataclass
class SecretID:
    remaining_uses: int = 0
    expire_time: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    accessor: str = field(default_factory=formats.new_uuid)


@dataclass
class AppRole(LoginRole):
    role_id: str = field(default_factory=formats.new_uuid)
    bind_secret_id: bool = True
    secret_id_num_uses: int = 0
    secret_id_ttl: int = 0
    secret_ids: dict[str, SecretID] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["bind_secret_id"] = self.bind_secret_id
        described["secret_id_num_uses"] = self.secret_id_num_uses
        described["secret_id_ttl"] = self.secret_id_ttl
        return described


@dataclass
class JWTRole(LoginRole):
    user_claim: str = "sub"
    bound_audiences: list[str] = field(default_factory=list)
    bound_subject: str = ""
    bound_claims: dict[str, Any] = field(default_factory=dict)
    claim_mappings: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described.update(
            role_type="jwt",
            user_claim=self.user_claim,
            bound_audiences=list(self.bound_audiences),
            bound_subject=self.bound_subject,
            bound_claims=dict(self.bound_claims) or None,
            claim_mappings=dict(self.claim_mappings) or None,
        )
        return described


def decode_jwt_claims(jwt: str) -> dict[str, Any]:
    """Decode a JWT's payload without checking its signature; raise ValueError when malformed."""
    parts = jwt.split(".")
    if len(parts) != 3:
        raise ValueError("compact JWS format must have three parts")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"failed to decode JWT payload: {error}") from None
    if not isinstance(claims, dict):
        raise ValueError("JWT payload is not a JSON object")
    return claims


def _audiences(claims: dict[str, Any]) -> list[str]:
    audience = claims.get("aud")
    if audience is None:
        return []
    return [audience] if isinstance(audience, str) else [str(item) for item in audience]


def _expired(claims: dict[str, Any], now: float) -> bool:
    expiry = claims.get("exp")
    return isinstance(expiry, int | float) and expiry <= now


class LoginEngine(Engine):
    """Common parts of the login methods: the role map, role CRUD and token issue."""

    role_class: type[LoginRole] = LoginRole

    def __init__(self) -> None:
        self.roles: dict[str, LoginRole] = {}
        self.config: dict[str, Any] = {}

    def unauthenticated(self, rest: str) -> bool:
        return rest == "login"

    def handle(self, request: Request) -> Reply | None:
        rest = request.rest
        if rest == "login":
            if request.operation != UPDATE:
                raise unsupported_operation()
            return self.login(request)
        if rest == "config":
            return self._config(request)
        if rest in ("role", "role/") and request.operation == LIST:
            keys = sorted(self.roles)
            if not keys:
                raise not_found()
            return Reply(data={"keys": keys})
        if rest.startswith("role/"):
            return self.handle_role(request, rest[len("role/") :])
        raise unsupported_path()

    def _config(self, request: Request) -> Reply | None:
        if request.operation == READ:
            return Reply(data=dict(self.config))
        if request.operation == UPDATE:
            self.config.update(request.data or {})
            return None
        raise unsupported_operation()

    def handle_role(self, request: Request, name: str) -> Reply | None:
        if "/" in name:
            raise unsupported_path()
        operation = request.operation
        if operation == READ:
            role = self.roles.get(name)
            if role is None:
                raise not_found()
            return Reply(data=role.describe())
        if operation == UPDATE:
            self.roles[name] = self.role_from_body(name, request)
            return None
        if operation == DELETE:
            self.roles.pop(name, None)
            return None
        raise unsupported_operation()

    def role_from_body(self, name: str, request: Request) -> LoginRole:
        existing = self.roles.get(name)
        role = existing or self.role_class(name=name)
        try:
            policies = request.field("token_policies", request.field("policies"))
            if policies is not None:
                role.policies = formats.string_list(policies)
            for attribute in ("ttl", "max_ttl", "period"):
                value = request.field("token_" + attribute, request.field(attribute))
                if value is not None:
                    setattr(role, attribute, formats.parse_duration(value))
        except (formats.DurationError, ValueError) as error:
            raise bad_request(str(error)) from None
        no_default = request.field("token_no_default_policy")
        if no_default is not None:
            role.no_default_policy = bool(formats.parse_bool(no_default))
        self.update_role(role, request)
        return role

    def update_role(self, role: LoginRole, request: Request) -> None:
        """Apply the method-specific role fields of a role write."""

    def login(self, request: Request) -> Reply:
        raise NotImplementedError

    def issue(
        self,
        request: Request,
        role: LoginRole,
        *,
        display_name: str,
        meta: dict[str, str] | None,
    ) -> Reply:
        """Issue the login token for `role` and return the login reply."""
        state = request.state
        warnings: list[str] = []
        max_ttl = formats.SYSTEM_MAX_TTL
        if 0 < role.max_ttl < max_ttl:
            max_ttl = role.max_ttl
        ttl = role.period or role.ttl or formats.SYSTEM_DEFAULT_TTL
        if ttl > max_ttl:
            warnings.append(formats.ttl_capped_warning(ttl, max_ttl))
            ttl = max_ttl
        policies = list(role.policies)
        if not role.no_default_policy:
            policies.append("default")
        token = state.issue_token(
            namespace=request.namespace,
            policies=policies,
            ttl=ttl,
            renewable=True,
            display_name=display_name,
            path=request.path,
            meta=meta,
            parent=None,
            period=role.period,
            role=RoleRef(request.namespace.path, request.mount_path, role.name),
        )
        return Reply(auth=auth_block(token, state=state), warnings=warnings or None)


class KubernetesEngine(LoginEngine):
    type = "kubernetes"
    role_class = KubernetesRole

    def __init__(self) -> None:
        super().__init__()
        self.rejected_jwts: set[str] = set()

    def update_role(self, role: LoginRole, request: Request) -> None:
        assert isinstance(role, KubernetesRole)
        names = request.field("bound_service_account_names")
        if names is not None:
            role.bound_service_account_names = formats.string_list(names)
        namespaces = request.field("bound_service_account_namespaces")
        if namespaces is not None:
            role.bound_service_account_namespaces = formats.string_list(namespaces)
        if request.field("audience") is not None:
            role.audience = str(request.field("audience")) or None
        if not role.bound_service_account_names or not role.bound_service_account_namespaces:
            raise bad_request(
                '"bound_service_account_names" and "bound_service_account_namespaces" '
                "can not be empty"
            )

    def login(self, request: Request) -> Reply:
        role_name = request.field("role")
        if not role_name:
            raise bad_request("missing role")
        jwt = request.field("jwt")
        if not jwt:
            raise bad_request("missing jwt")
        role = self.roles.get(role_name)
        if role is None:
            raise bad_request(f'invalid role name "{role_name}"')
        assert isinstance(role, KubernetesRole)
        key = (request.namespace.path, request.mount_path)
        request.state.received_jwts.setdefault(key, []).append(jwt)

        # NOTE: the 403 texts for malformed, expired or wrong-audience JWTs are written for this
        # emulator; Vault passes through its JWT validator's message, which differs by version.
        try:
            claims = decode_jwt_claims(jwt)
        except ValueError as error:
            raise VaultHTTPError(403, f"failed to validate JWT: {error}") from None
        if request.state.check_jwt_expiry and _expired(claims, request.state.now()):
            raise VaultHTTPError(403, "failed to validate JWT: token is expired")
        if role.audience and role.audience not in _audiences(claims):
            raise VaultHTTPError(
                403,
                "failed to validate JWT: invalid audience (aud) claim: audience claim does "
                "not match any expected audience",
            )
        if jwt in self.rejected_jwts:
            # This emulates the TokenReview API rejecting a revoked service account token.
            raise VaultHTTPError(403, PERMISSION_DENIED)
        namespace, name = _service_account(claims)
        if not any(formats.glob_match(p, namespace) for p in role.bound_service_account_namespaces):
            raise VaultHTTPError(403, "namespace not authorized")
        if not any(formats.glob_match(p, name) for p in role.bound_service_account_names):
            raise VaultHTTPError(403, "service account name not authorized")

        meta = {
            "role": role.name,
            "service_account_name": name,
            "service_account_namespace": namespace,
            "service_account_secret_name": str(
                claims.get("kubernetes.io/serviceaccount/secret.name", "")
            ),
            "service_account_uid": _service_account_uid(claims),
        }
        return self.issue(request, role, display_name=f"kubernetes-{namespace}-{name}", meta=meta)


def _service_account(claims: dict[str, Any]) -> tuple[str, str]:
    """Return (namespace, name) from `sub` = `system:serviceaccount:<namespace>:<name>`."""
    subject = claims.get("sub")
    parts = subject.split(":") if isinstance(subject, str) else []
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not all(parts[2:]):
        raise VaultHTTPError(403, "failed to validate JWT: sub is not a service account subject")
    return parts[2], parts[3]


def _service_account_uid(claims: dict[str, Any]) -> str:
    projected = claims.get("kubernetes.io")
    if isinstance(projected, dict):
        account = projected.get("serviceaccount")
        if isinstance(account, dict) and account.get("uid"):
            return str(account["uid"])
    return str(claims.get("kubernetes.io/serviceaccount/service-account.uid", ""))


class AppRoleEngine(LoginEngine):
    type = "approle"
    role_class = AppRole

    def update_role(self, role: LoginRole, request: Request) -> None:
        assert isinstance(role, AppRole)
        bind = request.field("bind_secret_id")
        if bind is not None:
            role.bind_secret_id = bool(formats.parse_bool(bind))
        try:
            if request.field("secret_id_num_uses") is not None:
                role.secret_id_num_uses = int(request.field("secret_id_num_uses"))
            if request.field("secret_id_ttl") is not None:
                role.secret_id_ttl = formats.parse_duration(request.field("secret_id_ttl"))
        except (formats.DurationError, TypeError, ValueError) as error:
            raise bad_request(str(error)) from None
        if request.field("role_id"):
            role.role_id = str(request.field("role_id"))

    def handle_role(self, request: Request, name: str) -> Reply | None:
        role_name, _, action = name.partition("/")
        if not action:
            return super().handle_role(request, role_name)
        role = self.roles.get(role_name)
        if role is None:
            raise bad_request(f'role "{role_name}" does not exist')
        assert isinstance(role, AppRole)
        if action == "role-id" and request.operation == READ:
            return Reply(data={"role_id": role.role_id})
        if action == "role-id" and request.operation == UPDATE:
            role.role_id = str(request.field("role_id") or role.role_id)
            return None
        if action in ("secret-id", "custom-secret-id") and request.operation == UPDATE:
            secret_id = request.field("secret_id") if action == "custom-secret-id" else None
            return self._new_secret_id(request, role, secret_id)
        raise unsupported_path()

    def _new_secret_id(self, request: Request, role: AppRole, secret_id: str | None) -> Reply:
        metadata = request.field("metadata")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata) if metadata else {}
            except json.JSONDecodeError:
                raise bad_request("failed to parse metadata") from None
        value = secret_id or formats.new_uuid()
        entry = self.add_secret_id(role, value, now=request.state.now())
        entry.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        return Reply(
            data={
                "secret_id": value,
                "secret_id_accessor": entry.accessor,
                "secret_id_num_uses": role.secret_id_num_uses,
                "secret_id_ttl": role.secret_id_ttl,
            }
        )

    def add_secret_id(self, role: AppRole, secret_id: str, *, now: float) -> SecretID:
        entry = SecretID(
            remaining_uses=role.secret_id_num_uses,
            expire_time=now + role.secret_id_ttl if role.secret_id_ttl else None,
        )
        role.secret_ids[secret_id] = entry
        return entry

    def login(self, request: Request) -> Reply:
        role_id = request.field("role_id")
        if not role_id:
            # NOTE: 500 follows Vault's code path and an OpenBao probe; unconfirmed on Vault.
            raise VaultHTTPError(500, "missing role_id")
        role = next(
            (r for r in self.roles.values() if isinstance(r, AppRole) and r.role_id == role_id),
            None,
        )
        if role is None:
            raise bad_request("invalid role or secret ID")
        secret_id = request.field("secret_id")
        meta: dict[str, str] = {}
        if role.bind_secret_id:
            if not secret_id:
                raise bad_request("missing secret_id")
            entry = role.secret_ids.get(secret_id)
            now = request.state.now()
            if entry is None or (entry.expire_time is not None and entry.expire_time <= now):
                raise bad_request("invalid role or secret ID")
            if entry.remaining_uses:
                entry.remaining_uses -= 1
                if entry.remaining_uses == 0:
                    del role.secret_ids[secret_id]
            meta.update(entry.metadata)
        meta["role_name"] = role.name
        return self.issue(request, role, display_name="approle", meta=meta)


class JWTEngine(LoginEngine):
    type = "jwt"
    role_class = JWTRole

    def update_role(self, role: LoginRole, request: Request) -> None:
        assert isinstance(role, JWTRole)
        if request.field("user_claim") is not None:
            role.user_claim = str(request.field("user_claim"))
        if request.field("bound_audiences") is not None:
            role.bound_audiences = formats.string_list(request.field("bound_audiences"))
        if request.field("bound_subject") is not None:
            role.bound_subject = str(request.field("bound_subject"))
        for name in ("bound_claims", "claim_mappings"):
            value = request.field(name)
            if value is not None:
                if not isinstance(value, dict):
                    raise bad_request(f"{name} must be a map")
                setattr(role, name, dict(value))

    def login(self, request: Request) -> Reply:
        role_name = str(request.field("role") or self.config.get("default_role") or "").lower()
        if not role_name:
            raise bad_request("missing role")
        role = self.roles.get(role_name)
        if role is None:
            raise bad_request(f'role "{role_name}" could not be found')
        assert isinstance(role, JWTRole)
        jwt = request.field("jwt")
        if not jwt:
            raise bad_request("missing token")
        key = (request.namespace.path, request.mount_path)
        request.state.received_jwts.setdefault(key, []).append(jwt)
        claims = self._validate(role, jwt, request=request)
        user = claims.get(role.user_claim)
        if user is None:
            raise bad_request(f'claim "{role.user_claim}" not found in token')
        meta = {"role": role.name}
        for claim, meta_key in role.claim_mappings.items():
            if claim in claims:
                meta[meta_key] = str(claims[claim])
        return self.issue(request, role, display_name=str(user), meta=meta)

    def _validate(self, role: JWTRole, jwt: str, *, request: Request) -> dict[str, Any]:
        # NOTE: the texts after "error validating token:" are this emulator's; Vault's come from
        # its JWT library and vary by version.
        try:
            claims = decode_jwt_claims(jwt)
        except ValueError as error:
            raise bad_request(f"error validating token: {error}") from None
        if request.state.check_jwt_expiry and _expired(claims, request.state.now()):
            raise bad_request("error validating token: token is expired (exp)")
        audiences = _audiences(claims)
        if audiences and not role.bound_audiences:
            raise bad_request("audience claim found in JWT but no audiences bound to the role")
        if role.bound_audiences and not set(audiences) & set(role.bound_audiences):
            raise bad_request(
                "error validating token: invalid audience (aud) claim: audience claim does not "
                "match any expected audience"
            )
        if role.bound_subject and claims.get("sub") != role.bound_subject:
            raise bad_request("error validating token: invalid subject (sub) claim")
        for claim, expected in role.bound_claims.items():
            allowed = expected if isinstance(expected, list) else [expected]
            if claims.get(claim) not in allowed:
                raise bad_request(
                    f'error validating claims: claim "{claim}" does not match any associated '
                    "bound claim values"
                )
        return claims


LOGIN_ENGINES: dict[str, type[LoginEngine]] = {
    "kubernetes": KubernetesEngine,
    "approle": AppRoleEngine,
    "jwt": JWTEngine,
    "oidc": JWTEngine,
}
