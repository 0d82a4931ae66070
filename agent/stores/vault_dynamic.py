"""Vault dynamic secrets: the requests that issue, renew, look up and revoke them.

`VaultGenerator` sends one VaultDynamicSecret's request (GET, or POST/PUT with its parameters)
and returns the response with its lease. It renews, looks up and revokes leases through
`sys/leases/*`. A token made by a `resultType: Auth` request is renewed, looked up and revoked
with its own `auth/token/*-self` requests, which Vault's default policy allows. The generator
keeps no schedule: `agent.leases` decides when each call is due.

The generator's own token comes from a `VaultConnection`, as a store's does. The lease manager
makes one change: a token replaced by a new login is handed to the manager
(`on_token_replaced`) instead of being revoked, because Vault revokes every lease a token
created together with the token.

Errors are StoreErrors naming the generator and the path. They never contain a value, a lease
id or a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from agent.errors import AccessDeniedError, InvalidValueError, RemoteKeyNotFoundError, StoreError
from agent.generators import GeneratorDeclaration, LeaseRefusedError, SecretKind
from agent.metrics import Metrics
from agent.refs import Refs
from agent.stores.vault_auth import VaultConnection, VaultToken
from agent.stores.vault_client import vault_errors

_VaultErrors = (hvac.exceptions.VaultError, requests.RequestException)
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class IssuedSecret:
    """One response of a generator's request.

    `data` maps each top-level field to its value (the response's `data`, or its `auth` block).
    `duration` is the lease's TTL in seconds (0 when there is none) and `token` the token that
    sent the request, which the lease dies with.
    """

    data: dict[str, Any] = field(repr=False)
    kind: SecretKind
    lease_id: str = field(repr=False)
    duration: float
    renewable: bool
    token: VaultToken | None = field(repr=False)


class VaultGenerator:
    """Sends the requests of one VaultDynamicSecret through a connection of its own.

    Not thread-safe: the lease manager calls it under its lock.
    """

    def __init__(
        self,
        declaration: GeneratorDeclaration,
        *,
        refs: Refs,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.declaration = declaration
        self.name = declaration.display_name
        self.spec = declaration.spec
        self.path = declaration.spec.path
        self.clock = clock
        self.connection = VaultConnection(
            store=self.name,
            provider=declaration.spec.provider,
            refs=refs,
            metrics=metrics,
            clock=clock,
        )

    # -- issue ---------------------------------------------------------------------------------

    def issue(self, *, min_token_life: float = 0.0) -> IssuedSecret:
        """Send the generator's request and return its response.

        When the connection's token was created by a login, can no longer be extended and has
        less than `min_token_life` seconds left, a new login comes first, so that the new lease
        does not die with a token about to expire.
        """
        self.connection.ensure_token()
        self._replace_expiring_token(min_token_life)
        try:
            response = self._with_token_check(self._send)
        except _VaultErrors as error:
            raise self._request_error(error) from None
        # Read after the request: a 403 may have made the connection log in again and retry.
        return self._issued(response, self.connection.token)

    def _replace_expiring_token(self, min_token_life: float) -> None:
        token = self.connection.token
        if token is None or not token.created_by_login:
            return
        expiry = token.expires_at()
        extendable = token.renewable and not token.capped and not token.rejected
        if expiry is None or extendable or expiry - self.clock() >= min_token_life:
            return
        self.connection.replace_token(reason="lease_parent_expiring")

    def _send(self) -> Any:
        client = self.connection.client
        path = f"/v1/{self.path}"
        method = self.spec.method
        if method == "GET":
            return self.connection.request("issue", lambda: client.adapter.get(path))
        parameters = self.spec.parameters or {}
        if method == "POST":
            return self.connection.request(
                "issue", lambda: client.adapter.post(path, json=parameters)
            )
        return self.connection.request("issue", lambda: client.adapter.put(path, json=parameters))

    def _issued(self, response: Any, token: VaultToken | None) -> IssuedSecret:
        if not isinstance(response, dict):
            raise InvalidValueError(
                "Vault's response has no body",
                store=self.name,
                remote_key=self.path,
                fix="check spec.path and spec.method: the request must return a secret",
            )
        if self.spec.result_type == "Auth":
            auth = response.get("auth")
            if not isinstance(auth, dict) or not auth.get("client_token"):
                raise InvalidValueError(
                    "Vault's response has no auth block with a token",
                    store=self.name,
                    remote_key=self.path,
                    fix="use resultType Data, or a path that creates a token such as "
                    "auth/token/create",
                )
            return IssuedSecret(
                data=dict(auth),
                kind="token",
                lease_id="",
                duration=float(auth.get("lease_duration") or 0),
                renewable=bool(auth.get("renewable")),
                token=token,
            )
        data = response.get("data")
        if not isinstance(data, dict) or not data:
            raise InvalidValueError(
                "Vault's response has no data",
                store=self.name,
                remote_key=self.path,
                fix="check spec.path and spec.method, or use resultType Auth for a request that "
                "creates a token",
            )
        lease_id = str(response.get("lease_id") or "")
        duration = float(response.get("lease_duration") or 0)
        kind: SecretKind = "none"
        if lease_id:
            kind = "lease"
        elif duration > 0:
            kind = "ttl"
        return IssuedSecret(
            data=dict(data),
            kind=kind,
            lease_id=lease_id,
            duration=duration,
            renewable=bool(response.get("renewable")) and kind == "lease",
            token=token,
        )

    # -- renew, look up, revoke ----------------------------------------------------------------

    def renew(
        self, *, kind: SecretKind, lease_id: str, token_value: str, increment: float
    ) -> float:
        """Renew a lease (or an Auth response's token) by `increment` seconds; return the seconds
        Vault granted, counted from now.

        Raises LeaseRefusedError when Vault refuses for good, StoreError otherwise.
        """
        self.connection.ensure_token()
        seconds = max(1, int(increment))
        if kind == "token":
            with self._as_token(token_value) as client:
                response = self._refusable(
                    "renew_token",
                    lambda: client.auth.token.renew_self(increment=seconds),
                )
            block = response.get("auth") if isinstance(response, dict) else None
            granted = block.get("lease_duration") if isinstance(block, dict) else None
        else:
            client = self.connection.client
            response = self._refusable(
                "renew_lease",
                lambda: client.sys.renew_lease(lease_id=lease_id, increment=seconds),
            )
            granted = response.get("lease_duration") if isinstance(response, dict) else None
        if not isinstance(granted, int | float):
            raise StoreError(
                "Vault's response to a renewal has no lease_duration",
                store=self.name,
                remote_key=self.path,
            )
        return float(granted)

    def remaining(self, *, kind: SecretKind, lease_id: str, token_value: str) -> float | None:
        """Return the seconds a lease (or token) has left by Vault's lookup, None when Vault no
        longer has it. Raises StoreError when the lookup fails otherwise."""
        self.connection.ensure_token()
        if kind == "token":
            with self._as_token(token_value) as client:
                try:
                    response = self.connection.request(
                        "lookup_token", client.auth.token.lookup_self
                    )
                except hvac.exceptions.Forbidden:
                    return None
                except _VaultErrors as error:
                    raise self._request_error(error) from None
        else:
            client = self.connection.client
            try:
                response = self.connection.request(
                    "lookup_lease", lambda: client.sys.read_lease(lease_id=lease_id)
                )
            except hvac.exceptions.InvalidRequest:
                return None  # "invalid lease": revoked or expired
            except _VaultErrors as error:
                raise self._request_error(error) from None
        data = response.get("data") if isinstance(response, dict) else None
        ttl = data.get("ttl") if isinstance(data, dict) else None
        return float(ttl) if isinstance(ttl, int | float) else None

    def revoke(self, *, kind: SecretKind, lease_id: str, token_value: str) -> None:
        """Revoke a lease (or an Auth response's token). An unknown lease counts as revoked.

        Raises StoreError when Vault cannot be reached or refuses (AccessDeniedError for a
        policy that lacks update on sys/leases/revoke).
        """
        self.connection.ensure_token()
        if kind == "token":
            with self._as_token(token_value) as client:
                try:
                    self.connection.request("revoke_token", client.auth.token.revoke_self)
                except hvac.exceptions.Forbidden:
                    return  # Vault no longer accepts the token: nothing is left to revoke
                except _VaultErrors as error:
                    raise self._request_error(error) from None
            return
        client = self.connection.client
        try:
            self._with_token_check(
                lambda: self.connection.request(
                    "revoke_lease", lambda: client.sys.revoke_lease(lease_id=lease_id)
                )
            )
        except hvac.exceptions.Forbidden:
            raise AccessDeniedError(
                "permission denied: the token's policies do not allow update on sys/leases/revoke",
                store=self.name,
                remote_key=self.path,
                fix=f"grant update on sys/leases/revoke to {self.connection.identity()}; until "
                "then superseded leases end at their TTL",
            ) from None
        except _VaultErrors as error:
            raise self._request_error(error) from None

    def maintain(self) -> float | None:
        """Renew or replace the connection's token if due; return seconds until next due."""
        return self.connection.maintain()

    def close(self, *, revoke_token: bool) -> None:
        """Let go of the connection; revoke its login token only when `revoke_token` is set."""
        self.connection.revoke_on_close = revoke_token
        self.connection.close()

    # -- helpers -------------------------------------------------------------------------------

    def _refusable(self, operation: str, call: Callable[[], _Result]) -> _Result:
        try:
            return self.connection.request(operation, call)
        except (
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Forbidden,
            hvac.exceptions.InvalidPath,
        ) as error:
            detail = vault_errors(error) or type(error).__name__
            raise LeaseRefusedError(
                f"Vault rejected the renewal ({detail})", store=self.name, remote_key=self.path
            ) from None
        except _VaultErrors as error:
            raise self._request_error(error) from None

    @contextmanager
    def _as_token(self, token_value: str) -> Iterator[hvac.Client]:
        """Send requests with another token on the data client, then restore the client's own."""
        client = self.connection.client
        saved = client.token
        client.token = token_value
        try:
            yield client
        finally:
            client.token = saved

    def _with_token_check(self, send: Callable[[], _Result]) -> _Result:
        """Send a request; after a 403, retry once if the connection's token was replaced."""
        try:
            return send()
        except hvac.exceptions.Forbidden:
            if not self.connection.recover_from_forbidden():
                raise
        return send()

    def _request_error(self, error: Exception) -> StoreError:
        translated = self.connection.store_wide_error(error)
        if translated is not None:
            return translated
        detail = vault_errors(error) if isinstance(error, hvac.exceptions.VaultError) else ""
        reason = f" ({detail})" if detail else ""
        verb = "read" if self.spec.method == "GET" else "update"
        if isinstance(error, hvac.exceptions.Forbidden):
            return AccessDeniedError(
                f"permission denied: the token's policies do not allow {verb} on {self.path}",
                store=self.name,
                remote_key=self.path,
                fix=f"grant {verb} on {self.path} in a Vault policy of "
                f"{self.connection.identity()}",
            )
        if isinstance(error, hvac.exceptions.InvalidPath):
            return RemoteKeyNotFoundError(
                f"Vault has nothing at {self.path}{reason}",
                store=self.name,
                remote_key=self.path,
                fix="check spec.path: the secrets engine's mount and the role name",
            )
        return StoreError(
            f"Vault rejected the request{reason}",
            store=self.name,
            remote_key=self.path,
            fix="check spec.path, spec.method and spec.parameters",
        )
