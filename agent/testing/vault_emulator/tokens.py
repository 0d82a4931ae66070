"""The token auth method (`auth/token/...`): lookup, renew, revoke and create.

TTL arithmetic follows Vault's `CalculateTTL`. A renewal counts from now, not from the old expire
time. It is capped at the token's issue time plus its effective max TTL, which is the system
maximum lowered by the login role's max TTL or by `explicit_max_ttl`, and the reply then carries
Vault's capping warning.
Limitation: batch tokens, token roles, accessors endpoints and response wrapping are not
implemented; asking for them gets a 400 naming the missing feature.
"""

from __future__ import annotations

from typing import Any

from . import formats
from .protocol import (
    READ,
    UPDATE,
    Engine,
    Reply,
    Request,
    VaultHTTPError,
    bad_request,
    unsupported_operation,
    unsupported_path,
)
from .state import Namespace, Token, VaultState


def auth_block(token: Token, *, state: VaultState) -> dict[str, Any]:
    """Return the `auth` object Vault sends after a login, a token create or a renewal."""
    if token.expire_time is None:
        lease_duration = 0
    else:
        lease_duration = max(0, round(token.expire_time - state.now()))
    block: dict[str, Any] = {
        "client_token": token.id,
        "accessor": token.accessor,
        "policies": list(token.policies),
        "token_policies": list(token.policies),
        "metadata": dict(token.meta) if token.meta is not None else None,
        "lease_duration": lease_duration,
        "renewable": token.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": token.orphan,
        "mfa_requirement": None,
        "num_uses": token.num_uses,
    }
    if not token.policies:
        del block["token_policies"]
    return block


def lookup_data(token: Token, *, state: VaultState) -> dict[str, Any]:
    """Return the `data` of `auth/token/lookup-self` for `token`."""
    now = state.now()
    ttl = 0 if token.expire_time is None else max(0, round(token.expire_time - now))
    data: dict[str, Any] = {
        "accessor": token.accessor,
        "creation_time": int(token.creation_time),
        "creation_ttl": token.creation_ttl,
        "display_name": token.display_name,
        "entity_id": "",
        "expire_time": (
            formats.rfc3339(token.expire_time) if token.expire_time is not None else None
        ),
        "explicit_max_ttl": token.explicit_max_ttl,
        "id": token.id,
        "issue_time": formats.rfc3339(token.creation_time),
        "meta": dict(token.meta) if token.meta is not None else None,
        "num_uses": token.num_uses,
        "orphan": token.orphan,
        "path": token.path,
        "policies": list(token.policies),
        "renewable": token.renewable,
        "ttl": ttl,
        "type": "service",
    }
    if token.last_renewal is not None:
        data["last_renewal_time"] = int(token.last_renewal)
        data["last_renewal"] = formats.rfc3339(token.last_renewal)
    if token.period:
        data["period"] = token.period
    if token.namespace:
        data["namespace_path"] = token.namespace + "/"
    return data


def _backend_ttls(state: VaultState, token: Token) -> tuple[int, int, int]:
    """Return (ttl, max_ttl, period) the token's origin grants on renewal."""
    if token.role is None:
        return token.ttl, 0, token.period
    namespace = state.namespaces.get(token.role.namespace)
    mount = namespace.auth_mounts.get(token.role.mount_path) if namespace else None
    role = mount.engine.roles.get(token.role.role) if mount else None
    if role is None:
        # NOTE: Vault's status for this case is not confirmed; 500 is what the plugin error gives.
        raise VaultHTTPError(500, f'role "{token.role.role}" does not exist during renewal')
    return role.ttl, role.max_ttl, role.period


def renew_token(state: VaultState, token: Token, increment: int) -> list[str]:
    """Extend `token` the way Vault's `RenewToken` does; return the warnings to send."""
    if token.expire_time is None or not token.renewable:
        raise bad_request("lease is not renewable")
    now = state.now()
    now_seconds = formats.whole_seconds(now)
    issue_seconds = formats.whole_seconds(token.creation_time)
    backend_ttl, backend_max_ttl, period = _backend_ttls(state, token)
    warnings: list[str] = []

    max_ttl = formats.SYSTEM_MAX_TTL
    if 0 < backend_max_ttl < max_ttl:
        max_ttl = backend_max_ttl
    if 0 < token.explicit_max_ttl < max_ttl:
        max_ttl = token.explicit_max_ttl

    max_valid_time: int | None
    if period > 0:
        if period > max_ttl:
            warnings.append(
                f'period of "{formats.human_duration(period)}" exceeded the effective max_ttl of '
                f'"{formats.human_duration(max_ttl)}"; period value is capped accordingly'
            )
            period = max_ttl
        ttl = period
        explicit = token.explicit_max_ttl
        max_valid_time = issue_seconds + explicit if explicit > 0 else None
    else:
        ttl = increment if increment > 0 else (backend_ttl or formats.SYSTEM_DEFAULT_TTL)
        max_valid_time = issue_seconds + max_ttl

    if max_valid_time is not None:
        max_valid_ttl = max_valid_time - now_seconds
        if max_valid_ttl <= 0:
            raise bad_request("past the max TTL, cannot renew")
        if ttl > max_valid_ttl:
            warnings.append(formats.ttl_capped_warning(ttl, max_valid_ttl))
            ttl = max_valid_ttl

    token.ttl = ttl
    token.expire_time = now + ttl
    token.last_renewal = now
    return warnings


def _increment(request: Request) -> int:
    try:
        return formats.parse_duration(request.field("increment"))
    except formats.DurationError as error:
        raise bad_request(str(error)) from None


class TokenEngine(Engine):
    """Routes under `auth/token/`. Tokens themselves live in `VaultState.tokens`."""

    type = "token"

    def handle(self, request: Request) -> Reply | None:
        route = request.rest
        operation = request.operation
        state = request.state
        token = request.token
        assert token is not None, "the router rejects unauthenticated token-store requests"

        if route == "lookup-self" and operation in (READ, UPDATE):
            return Reply(data=lookup_data(token, state=state))
        if route == "lookup" and operation == UPDATE:
            return Reply(data=lookup_data(self._target(request), state=state))
        if route == "renew-self" and operation == UPDATE:
            return self._renew(request, token)
        if route == "renew" and operation == UPDATE:
            return self._renew(request, self._target(request))
        if route == "revoke-self" and operation == UPDATE:
            state.revoke_token(token)
            return None
        if route == "revoke" and operation == UPDATE:
            target = state.lookup_token(request.field("token"))
            if target is not None:
                state.revoke_token(target)
            return None
        if route in ("create", "create-orphan") and operation == UPDATE:
            return self._create(request, orphan_path=route == "create-orphan")
        if route.startswith("create/") and operation == UPDATE:
            raise bad_request(f"unknown role {route[len('create/') :]}")
        if route in ("lookup-self", "lookup", "renew-self", "renew", "revoke-self", "revoke"):
            raise unsupported_operation()
        raise unsupported_path()

    def _target(self, request: Request) -> Token:
        token_id = request.field("token")
        if not token_id:
            raise bad_request("missing token")
        target = request.state.lookup_token(token_id)
        if target is None or not request.state.token_reaches(target, request.namespace):
            # NOTE: "bad token" with 403 is read from Vault's handler; not checked on a server.
            raise VaultHTTPError(403, "bad token")
        return target

    def _renew(self, request: Request, token: Token) -> Reply:
        warnings = renew_token(request.state, token, _increment(request))
        return Reply(auth=auth_block(token, state=request.state), warnings=warnings or None)

    def _create(self, request: Request, *, orphan_path: bool) -> Reply:
        state = request.state
        parent = request.token
        assert parent is not None
        privileged = parent.is_root or request.allowed("sudo")
        settings = _CreateSettings.parse(request)
        warnings: list[str] = []

        if settings.token_id is not None and not privileged:
            raise bad_request("root or sudo privileges required to specify token id")
        if settings.no_parent and not privileged and not orphan_path:
            raise bad_request("root or sudo privileges required to create orphan token")
        if settings.period and not privileged:
            raise bad_request("root or sudo privileges required to create periodic token")

        policies = settings.policies if settings.policies else list(parent.policies)
        if not settings.no_default_policy:
            policies.append("default")
        if "root" in policies:
            policies = ["root"]
        if not privileged and not set(policies) - {"default"} <= set(parent.policies):
            raise bad_request("child policies must be subset of parent")
        namespace = state.namespaces[parent.namespace]
        warnings += _missing_policy_warnings(namespace, policies)

        ttl = settings.ttl
        max_ttl = formats.SYSTEM_MAX_TTL
        if 0 < settings.explicit_max_ttl < max_ttl:
            max_ttl = settings.explicit_max_ttl
        if settings.period:
            ttl = min(settings.period, max_ttl)
        elif ttl == 0:
            ttl = 0 if policies == ["root"] else min(formats.SYSTEM_DEFAULT_TTL, max_ttl)
        if ttl > max_ttl:
            warnings.append(formats.ttl_capped_warning(ttl, max_ttl))
            ttl = max_ttl

        orphan = orphan_path or settings.no_parent
        try:
            token = state.issue_token(
                namespace=namespace,
                policies=policies,
                ttl=ttl,
                renewable=settings.renewable,
                display_name=settings.display_name,
                path="auth/token/" + request.rest,
                meta=settings.meta,
                parent=None if orphan else parent,
                explicit_max_ttl=settings.explicit_max_ttl,
                period=settings.period,
                num_uses=settings.num_uses,
                token_id=settings.token_id,
            )
        except ValueError as error:
            raise bad_request(str(error)) from None
        return Reply(auth=auth_block(token, state=state), warnings=warnings or None)


def _missing_policy_warnings(namespace: Namespace, policies: list[str]) -> list[str]:
    return [
        f'Policy "{name}" does not exist'
        for name in policies
        if name not in ("root", "default") and name not in namespace.policies
    ]


class _CreateSettings:
    """The body of `auth/token/create`, validated."""

    def __init__(self) -> None:
        self.policies: list[str] = []
        self.ttl = 0
        self.explicit_max_ttl = 0
        self.period = 0
        self.renewable = True
        self.no_parent = False
        self.no_default_policy = False
        self.num_uses = 0
        self.display_name = "token"
        self.meta: dict[str, str] | None = None
        self.token_id: str | None = None

    @classmethod
    def parse(cls, request: Request) -> _CreateSettings:
        settings = cls()
        try:
            settings.policies = formats.string_list(request.field("policies"))
            settings.ttl = formats.parse_duration(request.field("ttl"))
            settings.explicit_max_ttl = formats.parse_duration(request.field("explicit_max_ttl"))
            settings.period = formats.parse_duration(request.field("period"))
            settings.num_uses = int(request.field("num_uses", 0))
        except (formats.DurationError, TypeError, ValueError) as error:
            raise bad_request(str(error)) from None
        if settings.num_uses < 0:
            raise bad_request("number of uses cannot be negative")

        for name in ("renewable", "no_parent", "no_default_policy"):
            raw = request.field(name)
            if raw is not None:
                flag = formats.parse_bool(raw)
                if flag is None:
                    raise bad_request(f"invalid value for {name}")
                setattr(settings, name, flag)

        token_type = request.field("type", "service")
        if token_type not in ("service", "default", ""):
            raise bad_request(f"token type {token_type!r} is not supported by this emulator")

        display_name = request.field("display_name")
        if display_name:
            settings.display_name = "token-" + "".join(
                c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in str(display_name)
            ).rstrip("-")

        meta = request.field("meta")
        if meta is not None:
            if not isinstance(meta, dict):
                raise bad_request("meta must be a map of strings")
            settings.meta = {str(key): str(value) for key, value in meta.items()}

        token_id = request.field("id")
        if token_id:
            if "." in str(token_id):
                raise bad_request("token IDs can not contain a period")
            settings.token_id = str(token_id)
        return settings
