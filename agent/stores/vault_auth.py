"""Logging in to Vault and keeping one token alive for a store.

`VaultConnection` owns a store's hvac clients and its token. It guarantees:
- One login per store, reused: a token created by login is renewed (`renew-self`) once about
  two thirds of its TTL has passed, checked before each use and by `maintain()`.
- When renewal is refused, or the max TTL stops the token from growing, it logs in again and
  then revokes the old token. So at most one token created by this store is alive between
  calls, unless a revocation fails (logged as `vault_token_revoke_failed`), or unless
  `on_token_replaced` is set: the old token then goes to that callback instead, because the
  leases it created would be revoked with it (see `agent.leases`).
- A token read from `tokenSecretRef` belongs to someone else: it is renewed when renewable, read
  again from its file at every use (so a rotated token is picked up), and never revoked.
- Credentials are read from their files at every login (a rotated service account token is used
  at the next login). No token, role ID, secret ID or JWT appears in a log line or an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from agent.errors import AccessDeniedError, StoreError
from agent.logs import log_event
from agent.metrics import Metrics
from agent.models import ServiceAccountSelector, VaultAuth, VaultProvider
from agent.refs import MissingReferenceError, Refs, require_one_line
from agent.stores.vault_client import (
    CATrust,
    StatusRecorder,
    load_ca_trust,
    new_client,
    new_session,
    result_label,
    store_wide_error,
    vault_errors,
    vault_namespace,
)

logger = logging.getLogger("agent.stores.vault")

# A token is renewed once this fraction of its TTL has passed, which leaves a third of the TTL
# to retry a failed renewal or login before the token expires.
RENEW_AT_FRACTION = 2 / 3
# After a failed renewal or login the next attempt waits this long, doubling up to the maximum,
# but never past half of the time the current token has left.
RETRY_MIN_SECONDS = 10.0
RETRY_MAX_SECONDS = 300.0

_VaultErrors = (hvac.exceptions.VaultError, requests.RequestException)
_Result = TypeVar("_Result")


@dataclass
class VaultToken:
    """A Vault token and what the store records about its lifetime, in store clock seconds."""

    value: str = field(repr=False)
    created_by_login: bool
    # Seconds granted by the last login, lookup or renewal; 0 means the token never expires.
    ttl: float
    renewable: bool
    obtained_at: float
    # The increment asked for at renewal: the TTL first granted.
    requested_ttl: float
    # True once a renewal granted less than asked: the max TTL is near and renewing is useless.
    capped: bool = False
    # True once Vault rejected the token itself (revoked, or expired before our clock showed it).
    rejected: bool = False

    def expires_at(self) -> float | None:
        return None if self.ttl <= 0 else self.obtained_at + self.ttl

    def usable(self, now: float) -> bool:
        expiry = self.expires_at()
        return not self.rejected and (expiry is None or now < expiry)

    def due_at(self) -> float | None:
        """Return when the token should be renewed or replaced, or None when never."""
        if self.ttl <= 0:
            return None
        if self.renewable and not self.capped:
            return self.obtained_at + self.ttl * RENEW_AT_FRACTION
        if not self.created_by_login:
            return None  # someone else's token that cannot grow: use it while it lasts
        if self.capped:
            # Replace it while a third of a normal TTL is left, the same margin a renewal keeps.
            margin = self.requested_ttl * (1 - RENEW_AT_FRACTION)
            return self.obtained_at + max(0.0, self.ttl - margin)
        return self.obtained_at + self.ttl * RENEW_AT_FRACTION


class VaultConnection:
    """The hvac clients of one store and the token they use.

    Data requests go to the store's namespace (`provider.namespace`, else `VAULT_NAMESPACE`).
    Logins and the token's own requests (`lookup-self`, `renew-self`, `revoke-self`) go to the
    login namespace: `auth.namespace` when set, else the same one.
    """

    def __init__(
        self,
        *,
        store: str,
        provider: VaultProvider,
        refs: Refs,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.provider = provider
        self.refs = refs
        self.metrics = metrics
        self.clock = clock
        self.namespace = vault_namespace(provider)
        self.login_namespace = provider.auth.namespace or self.namespace
        self.method = auth_method(provider.auth)
        # Revoke the token created by login when the store closes; a setting may turn it off.
        self.revoke_on_close = True
        # When set, a token created by login and replaced by a new login is passed here instead
        # of being revoked; the callee then owns its revocation.
        self.on_token_replaced: Callable[[VaultToken], None] | None = None
        self._trust: CATrust | None = None
        self._session: requests.Session | None = None
        self._status: StatusRecorder | None = None
        self._client: hvac.Client | None = None
        self._token_client: hvac.Client | None = None
        self._token: VaultToken | None = None
        # The AppRole's name, taken from the login response, for messages.
        self._approle_name: str | None = None
        self._retry_at: float | None = None
        self._retry_delay = RETRY_MIN_SECONDS

    # -- clients and requests ---------------------------------------------------------------

    @property
    def client(self) -> hvac.Client:
        """The client for data requests, created at first use."""
        self._open()
        assert self._client is not None
        return self._client

    def _open(self) -> None:
        if self._client is not None:
            return
        trust = load_ca_trust(self.provider, refs=self.refs, store=self.store)
        session, status = new_session(trust)
        self._trust, self._session, self._status = trust, session, status
        server = self.provider.server
        self._client = new_client(server, namespace=self.namespace, trust=trust, session=session)
        if self.login_namespace == self.namespace:
            self._token_client = self._client
        else:
            self._token_client = new_client(
                server, namespace=self.login_namespace, trust=trust, session=session
            )

    def request(self, operation: str, call: Callable[[], _Result]) -> _Result:
        """Send one request, counting it in the metrics under `operation`."""
        with self.metrics.backend_request(self.store, operation) as outcome:
            try:
                return call()
            except _VaultErrors as error:
                outcome.result = result_label(error)
                raise

    def store_wide_error(self, error: Exception) -> StoreError | None:
        """Translate a failure of the whole store, or return None when it concerns one request."""
        return store_wide_error(
            error,
            store=self.store,
            server=self.provider.server,
            trust=self._trust,
            last_status=self._status.last_status if self._status else None,
        )

    # -- the token --------------------------------------------------------------------------

    def ensure_token(self) -> None:
        """Make the clients carry a usable token: log in, adopt, renew or replace it as due.

        Raises a StoreError when no usable token can be had. A failed renewal or re-login while
        the current token is still valid is logged and retried later instead.
        """
        self._open()
        if self.method == "token":
            self._adopt_token_file()
        elif self._token is None or not self._token.usable(self.clock()):
            self._replace_token(reason="no_token" if self._token is None else "expired")
        self._refresh_if_due()

    def maintain(self) -> float | None:
        """Renew or replace the token if due; return seconds until the next action, or None.

        None means nothing is scheduled: no token yet, or one that never expires. Failures are
        logged and retried with backoff; the next `fetch` reports them if the token is unusable.
        """
        if self._token is None:
            return None
        try:
            self._refresh_if_due()
        except StoreError as error:
            self._schedule_retry(error)
        due = self._next_action_at()
        return None if due is None else max(0.0, due - self.clock())

    def recover_from_forbidden(self) -> bool:
        """Check the token after a 403; return True when it was replaced and a retry may pass.

        A token that `lookup-self` accepts is valid, so the 403 was the policy's decision and
        False is returned. A rejected token created by login is replaced by a new login; a
        rejected token from `tokenSecretRef` is replaced only if its file changed.
        """
        token = self._token
        assert token is not None and self._token_client is not None
        try:
            self.request("lookup_self", self._token_client.auth.token.lookup_self)
            return False
        except hvac.exceptions.Forbidden:
            pass
        except _VaultErrors as error:
            raise self._translate(error, operation="lookup-self") from None

        token.rejected = True
        log_event(logger, logging.WARNING, "vault_token_rejected", store=self.store)
        if token.created_by_login:
            self._replace_token(reason="token_rejected")
            return True
        if self._adopt_token_file():
            return True
        raise AccessDeniedError(
            "Vault rejected the token from tokenSecretRef: it is invalid, expired or revoked, "
            "or lacks the default policy",
            store=self.store,
            fix=f"write a valid token into {self._token_file_description()}",
        )

    def close(self) -> None:
        """Revoke the token created by login (unless `revoke_on_close` is off) and let go."""
        token = self._token
        if (
            token is not None
            and token.created_by_login
            and self.revoke_on_close
            and token.usable(self.clock())
        ):
            self._revoke(token)
        self._token = None
        self._retry_at = None
        if self._session is not None:
            self._session.close()
        if self._trust is not None:
            self._trust.close()
        self._trust = self._session = self._status = None
        self._client = self._token_client = None

    @property
    def token(self) -> VaultToken | None:
        """The token requests carry now, or None before the first login or adoption."""
        return self._token

    def replace_token(self, *, reason: str) -> None:
        """Log in again now (a token created by login only); the old token is handled as in
        any replacement. Raises StoreError when the login fails."""
        self._open()
        if self.method != "token":
            self._replace_token(reason=reason)

    def revoke(self, token: VaultToken) -> None:
        """Revoke `token` (one handed to `on_token_replaced`); failures are logged."""
        self._open()
        self._revoke(token)

    def identity(self) -> str:
        """Name the identity whose Vault policies decide access, for messages."""
        auth = self.provider.auth
        if auth.kubernetes is not None:
            return f"role {auth.kubernetes.role} at auth/{_mount(auth.kubernetes.mount_path)}"
        if auth.app_role is not None:
            name = f"AppRole {self._approle_name}" if self._approle_name else "the AppRole"
            return f"{name} at auth/{_mount(auth.app_role.path)}"
        return f"the token in {self._token_file_description()}"

    # -- renewal and replacement -------------------------------------------------------------

    def _next_action_at(self) -> float | None:
        if self._retry_at is not None:
            return self._retry_at
        return self._token.due_at() if self._token is not None else None

    def _refresh_if_due(self) -> None:
        token = self._token
        assert token is not None
        now = self.clock()
        due = self._next_action_at()
        if due is None or now < due:
            return
        try:
            if not token.usable(now) and token.created_by_login:
                self._replace_token(reason="expired")
            elif token.renewable and not token.capped:
                self._renew(token)
            elif token.created_by_login:
                reason = "max_ttl" if token.capped else "not_renewable"
                self._replace_token(reason=reason)
        except StoreError as error:
            current = self._token
            if current is None or not current.usable(self.clock()):
                raise
            self._schedule_retry(error)
            return
        self._retry_at = None
        self._retry_delay = RETRY_MIN_SECONDS

    def _renew(self, token: VaultToken) -> None:
        client = self._token_client
        assert client is not None
        increment = int(token.requested_ttl)
        try:
            response = self.request(
                "renew_self", lambda: client.auth.token.renew_self(increment=increment)
            )
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest) as error:
            # Refused: 403 means Vault no longer accepts the token, 400 that it cannot be renewed.
            token.rejected = isinstance(error, hvac.exceptions.Forbidden)
            token.renewable = False
            log_event(
                logger,
                logging.WARNING,
                "vault_token_renewal_refused",
                store=self.store,
                error=vault_errors(error) or type(error).__name__,
            )
            if token.created_by_login:
                self._replace_token(reason="renewal_refused")
            return
        except _VaultErrors as error:
            raise self._translate(error, operation="renew-self") from None

        granted = float(_auth_block(response, store=self.store)["lease_duration"])
        token.obtained_at = self.clock()
        token.ttl = granted
        token.capped = granted < token.requested_ttl
        event = "vault_token_renewal_capped" if token.capped else "vault_token_renewed"
        log_event(logger, logging.INFO, event, store=self.store, ttl_s=int(granted))
        due = token.due_at()
        if token.capped and token.created_by_login and due is not None and due <= self.clock():
            self._replace_token(reason="max_ttl")

    def _replace_token(self, *, reason: str) -> None:
        """Log in, then revoke the previous token if this store created it, or hand it to
        `on_token_replaced` when that is set.

        A token Vault rejected is revoked too unless it has expired by our clock: a token
        without the default policy is rejected by `lookup-self` and `renew-self` while alive.
        """
        old = self._token
        self._login(reason=reason)
        if old is None or not old.created_by_login:
            return
        if self.on_token_replaced is not None:
            self.on_token_replaced(old)
            return
        expiry = old.expires_at()
        if expiry is None or self.clock() < expiry:
            self._revoke(old)

    def _schedule_retry(self, error: StoreError) -> None:
        now = self.clock()
        delay = self._retry_delay
        token = self._token
        expiry = token.expires_at() if token is not None else None
        if expiry is not None and expiry > now:
            delay = min(delay, max(1.0, (expiry - now) / 2))
        self._retry_at = now + delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
        log_event(
            logger,
            logging.WARNING,
            "vault_token_refresh_failed",
            store=self.store,
            error=str(error),
            retry_in_s=round(delay, 1),
        )

    def _revoke(self, token: VaultToken) -> None:
        client = self._token_client
        assert client is not None
        current = client.token
        client.token = token.value
        try:
            self.request("revoke_self", client.auth.token.revoke_self)
            log_event(logger, logging.INFO, "vault_token_revoked", store=self.store)
        except hvac.exceptions.Forbidden:
            # Vault no longer accepts the token, so there is nothing left to revoke.
            log_event(logger, logging.DEBUG, "vault_token_already_invalid", store=self.store)
        except _VaultErrors as error:
            translated = self.store_wide_error(error)
            detail = str(translated) if translated else vault_errors(error) or type(error).__name__
            log_event(
                logger, logging.WARNING, "vault_token_revoke_failed", store=self.store, error=detail
            )
        finally:
            client.token = current

    def _set_token(self, token: VaultToken | None) -> None:
        self._token = token
        self._retry_at = None
        self._retry_delay = RETRY_MIN_SECONDS
        value = token.value if token is not None else ""
        assert self._client is not None and self._token_client is not None
        self._client.token = value
        self._token_client.token = value

    # -- login -------------------------------------------------------------------------------

    def _login(self, *, reason: str) -> None:
        client = self._token_client
        assert client is not None
        auth = self.provider.auth
        login = self._login_call(client, auth)
        saved = client.token
        client.token = ""  # a login carries no token, least of all a rejected one
        try:
            response = self.request("login", login)
        except _VaultErrors as error:
            failure = self._login_error(error)
            log_event(
                logger,
                logging.WARNING,
                "vault_login_failed",
                store=self.store,
                auth=self.method,
                error=str(failure),
            )
            raise failure from None
        finally:
            client.token = saved

        block = _auth_block(response, store=self.store)
        ttl = float(block.get("lease_duration") or 0)
        metadata = block.get("metadata") or {}
        if auth.app_role is not None and isinstance(metadata, dict):
            self._approle_name = metadata.get("role_name") or self._approle_name
        now = self.clock()
        self._set_token(
            VaultToken(
                value=str(block["client_token"]),
                created_by_login=True,
                ttl=ttl,
                renewable=bool(block.get("renewable")),
                obtained_at=now,
                requested_ttl=ttl,
            )
        )
        log_event(
            logger,
            logging.INFO,
            "vault_login",
            store=self.store,
            auth=self.method,
            ttl_s=int(ttl),
            renewable=bool(block.get("renewable")),
            reason=reason,
        )

    def _login_call(self, client: hvac.Client, auth: VaultAuth) -> Callable[[], Any]:
        """Read the credentials now (files may have rotated) and return the login request."""
        if auth.kubernetes is not None:
            kubernetes = auth.kubernetes
            field_prefix = "spec.provider.vault.auth.kubernetes"
            if kubernetes.secret_ref is not None:
                jwt = self._read_text(kubernetes.secret_ref, field=f"{field_prefix}.secretRef")
            else:
                jwt = self._read_service_account_token(kubernetes.service_account_ref)
            if not jwt:
                raise StoreError(
                    f"{field_prefix}: the service account token file is empty",
                    store=self.store,
                    fix="mount a projected service account token",
                )
            return lambda: client.auth.kubernetes.login(
                role=kubernetes.role,
                jwt=jwt,
                use_token=False,
                mount_point=_mount(kubernetes.mount_path),
            )

        assert auth.app_role is not None
        app_role = auth.app_role
        field_prefix = "spec.provider.vault.auth.appRole"
        if app_role.role_id is not None:
            role_id = app_role.role_id
        else:
            assert app_role.role_ref is not None
            role_id = self._read_text(app_role.role_ref, field=f"{field_prefix}.roleRef")
        secret_id = self._read_text(app_role.secret_ref, field=f"{field_prefix}.secretRef")
        return lambda: client.auth.approle.login(
            role_id=role_id,
            secret_id=secret_id,
            use_token=False,
            mount_point=_mount(app_role.path),
        )

    def _read_service_account_token(self, selector: ServiceAccountSelector | None) -> str:
        """Read the JWT for a Kubernetes login: the named service account's token, or the pod's
        own token when the declaration names neither `serviceAccountRef` nor `secretRef`."""
        field_prefix = "spec.provider.vault.auth.kubernetes"
        if selector is not None:
            field = f"{field_prefix}.serviceAccountRef"
            token = self.refs.read_token(selector, store=self.store, field=field)
        else:
            # The user wrote neither field, so a message must not name one as the culprit.
            field = field_prefix
            try:
                token = self.refs.read_token(None, store=self.store, field=field)
            except MissingReferenceError as error:
                raise MissingReferenceError(
                    f"{error.message} (neither serviceAccountRef nor secretRef is set, so the "
                    "pod's own service account token is used)",
                    store=self.store,
                    fix=f"{error.fix}, or add serviceAccountRef naming a service account whose "
                    "token is mounted at <refs dir>/serviceaccount/<name>/token",
                ) from None
        location = self.refs.token_location(selector)
        return require_one_line(token, store=self.store, field=field, location=location)

    def _login_error(self, error: Exception) -> StoreError:
        translated = self.store_wide_error(error)
        if translated is not None:
            return translated
        auth = self.provider.auth
        detail = vault_errors(error) if isinstance(error, hvac.exceptions.VaultError) else ""
        where = f" in namespace {self.login_namespace}" if self.login_namespace else ""
        if auth.kubernetes is not None:
            mount = _mount(auth.kubernetes.mount_path)
            role = auth.kubernetes.role
            subject = f"the Kubernetes login with role {role} at auth/{mount}{where}"
            fix = (
                f"check that role {role} exists at auth/{mount} and is bound to this pod's "
                "service account and namespace"
            )
        else:
            assert auth.app_role is not None
            mount = _mount(auth.app_role.path)
            subject = f"the AppRole login at auth/{mount}{where}"
            fix = (
                "check the role ID (appRole.roleId or roleRef) and the secret ID (secretRef); "
                "a secret ID may have expired or run out of uses"
            )
        reason = f" ({detail})" if detail else ""
        if isinstance(error, hvac.exceptions.InvalidPath):
            return StoreError(
                f"no auth method is mounted at auth/{mount}{where}{reason}",
                store=self.store,
                fix="set the auth mount path of the store to where the method is enabled",
            )
        return AccessDeniedError(f"Vault rejected {subject}{reason}", store=self.store, fix=fix)

    # -- token from tokenSecretRef -----------------------------------------------------------

    def _adopt_token_file(self) -> bool:
        """Read the token file; adopt its token if it changed. Return True when it changed."""
        selector = self.provider.auth.token_secret_ref
        assert selector is not None
        value = self._read_text(selector, field="spec.provider.vault.auth.tokenSecretRef")
        if not value:
            raise StoreError(
                "spec.provider.vault.auth.tokenSecretRef: the token file is empty",
                store=self.store,
                fix=f"write a Vault token into {self._token_file_description()}",
            )
        if self._token is not None and self._token.value == value:
            return False

        token = VaultToken(
            value=value,
            created_by_login=False,
            ttl=0.0,
            renewable=False,
            obtained_at=self.clock(),
            requested_ttl=0.0,
        )
        self._set_token(token)
        assert self._token_client is not None
        try:
            response = self.request("lookup_self", self._token_client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            # A valid token without the default policy cannot look itself up; reads will tell.
            log_event(logger, logging.WARNING, "vault_token_lookup_denied", store=self.store)
            return True
        except _VaultErrors as error:
            self._token = None
            raise self._translate(error, operation="lookup-self") from None

        data = response.get("data") if isinstance(response, dict) else None
        data = data if isinstance(data, dict) else {}
        token.ttl = float(data.get("ttl") or 0)
        token.renewable = bool(data.get("renewable")) and token.ttl > 0
        token.requested_ttl = float(data.get("creation_ttl") or token.ttl)
        token.obtained_at = self.clock()
        log_event(
            logger,
            logging.INFO,
            "vault_token_adopted",
            store=self.store,
            auth=self.method,
            ttl_s=int(token.ttl),
            renewable=token.renewable,
        )
        return True

    def _token_file_description(self) -> str:
        selector = self.provider.auth.token_secret_ref
        if selector is None:
            return "the token Secret"
        return f"Secret {selector.name} (key {selector.key})"

    # -- helpers -----------------------------------------------------------------------------

    def _read_text(self, selector: Any, *, field: str) -> str:
        """Read a credential from a referenced key: UTF-8 text on one line, without the
        surrounding whitespace."""
        content = self.refs.read_secret(selector, store=self.store, field=field)
        try:
            text = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise StoreError(
                f"{field}: the referenced file is not UTF-8 text",
                store=self.store,
                fix=f"check Secret {selector.name} (key {selector.key})",
            ) from None
        location = self.refs.secret_location(selector)
        return require_one_line(text, store=self.store, field=field, location=location)

    def _translate(self, error: Exception, *, operation: str) -> StoreError:
        translated = self.store_wide_error(error)
        if translated is not None:
            return translated
        detail = vault_errors(error) if isinstance(error, hvac.exceptions.VaultError) else ""
        reason = f" ({detail})" if detail else ""
        return StoreError(f"{operation} failed{reason}", store=self.store)


def auth_method(auth: VaultAuth) -> str:
    """Name the auth method, as it appears in logs: token, kubernetes or appRole."""
    if auth.kubernetes is not None:
        return "kubernetes"
    if auth.app_role is not None:
        return "appRole"
    return "token"


def _mount(path: str) -> str:
    return path.strip("/")


def _auth_block(response: object, *, store: str) -> dict[str, Any]:
    block = response.get("auth") if isinstance(response, dict) else None
    if not isinstance(block, dict) or not block.get("client_token"):
        raise StoreError(
            "Vault's login response has no auth block with a token",
            store=store,
            fix="check that the server is Vault and the auth mount path is right",
        )
    return block
