"""References resolved through the Kubernetes API: `*SecretRef`, `caProvider`, `serviceAccountRef`.

`ApiRefs` is the controller's `ReferenceResolver`. Stores call it from their worker thread, and it
sends each request on the controller's event loop, so a store re-reads a rotated Secret or asks
for a fresh service account token at every login, as it re-reads files inside a pod.

Namespaces: a SecretStore reads only its own namespace, and a reference that names another one
is refused. A ClusterSecretStore reads the namespace a reference names, else the namespace of
the ExternalSecret being reconciled. A `serviceAccountRef` becomes a TokenRequest
(`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`) for the reference's audiences; without
a reference the controller's own token file is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Coroutine
from typing import Any, TypeVar

from agent.controller.kube import KubeApiError, KubeClient
from agent.errors import StoreUnavailableError
from agent.models import CAProvider, SecretKeySelector, ServiceAccountSelector
from agent.refs import MAX_REFERENCE_BYTES, MissingReferenceError, Refs

# The shortest lifetime the API server grants a requested token.
TOKEN_SECONDS = 600
REQUEST_TIMEOUT_SECONDS = 30.0

_Result = TypeVar("_Result")


class ApiRefs:
    """Resolves one store's references for ExternalSecrets of one namespace."""

    def __init__(
        self,
        client: KubeClient,
        loop: asyncio.AbstractEventLoop,
        *,
        store_namespace: str | None,
        external_secret_namespace: str,
        own_token: Refs,
    ) -> None:
        self.client = client
        self.loop = loop
        # None for a ClusterSecretStore.
        self.store_namespace = store_namespace
        self.external_secret_namespace = external_secret_namespace
        self.own_token = own_token

    def namespace_for(self, selector: Any, *, store: str, field: str) -> str:
        """Return the namespace a reference is read from; refuse one a SecretStore may not read."""
        named = getattr(selector, "namespace", None)
        if self.store_namespace is None:
            return named or self.external_secret_namespace
        if named and named != self.store_namespace:
            raise MissingReferenceError(
                f"{field}: namespace {named} is not the SecretStore's namespace "
                f"{self.store_namespace}; a SecretStore reads references only in its own namespace",
                store=store,
                fix="remove the namespace, or use a ClusterSecretStore",
            )
        return self.store_namespace

    def secret_location(self, selector: SecretKeySelector | CAProvider) -> str:
        kind = selector.type if isinstance(selector, CAProvider) else "Secret"
        namespace = self._shown_namespace(selector)
        return f"{kind} {namespace}/{selector.name} (key {selector.key})"

    def token_location(self, selector: ServiceAccountSelector | None) -> str:
        if selector is None:
            return self.own_token.token_location(None)
        return f"a token of service account {self._shown_namespace(selector)}/{selector.name}"

    def read_secret(
        self, selector: SecretKeySelector | CAProvider, *, store: str, field: str
    ) -> bytes:
        """Read one key of a Secret or ConfigMap; raise MissingReferenceError naming `field`."""
        namespace = self.namespace_for(selector, store=store, field=field)
        kind = selector.type if isinstance(selector, CAProvider) else "Secret"
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        where = f"{kind} {namespace}/{selector.name}"
        body = self._call(
            self.client.get(f"/api/v1/namespaces/{namespace}/{plural}/{selector.name}"),
            store=store,
            field=field,
            what=where,
        )
        if body is None:
            raise MissingReferenceError(
                f"{field}: {where} not found",
                store=store,
                fix=f"create {kind} {selector.name} in namespace {namespace}",
            )
        content = _key_content(body, selector.key, encoded=kind == "Secret")
        if content is None:
            raise MissingReferenceError(
                f"{field}: {where} has no key {selector.key}",
                store=store,
                fix=f"add the key {selector.key} or fix the reference's key",
            )
        if len(content) > MAX_REFERENCE_BYTES:
            raise MissingReferenceError(
                f"{field}: {where} key {selector.key} is larger than {MAX_REFERENCE_BYTES} bytes",
                store=store,
                fix="point the reference at the key itself, not at a bundle",
            )
        return content

    def read_token(self, selector: ServiceAccountSelector | None, *, store: str, field: str) -> str:
        """Request a fresh token of the service account, or read the controller's own token."""
        if selector is None:
            return self.own_token.read_token(None, store=store, field=field)
        namespace = self.namespace_for(selector, store=store, field=field)
        spec: dict[str, Any] = {"expirationSeconds": TOKEN_SECONDS}
        if selector.audiences:
            spec["audiences"] = list(selector.audiences)
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{selector.name}/token"
        where = f"service account {namespace}/{selector.name}"
        body = self._call(
            self.client.create(path, {"apiVersion": "authentication.k8s.io/v1", "spec": spec}),
            store=store,
            field=field,
            what=where,
        )
        token = ((body or {}).get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise MissingReferenceError(
                f"{field}: the TokenRequest for {where} returned no token",
                store=store,
                fix="check that the API server issues service account tokens",
            )
        return token

    def _call(
        self, request: Coroutine[Any, Any, _Result], *, store: str, field: str, what: str
    ) -> _Result:
        """Run an API request on the controller's loop from a store's worker thread."""
        future = asyncio.run_coroutine_threadsafe(request, self.loop)
        try:
            return future.result(timeout=REQUEST_TIMEOUT_SECONDS)
        except TimeoutError:
            future.cancel()
            raise StoreUnavailableError(
                f"{field}: reading {what} timed out", store=store, fix="check the API server"
            ) from None
        except KubeApiError as error:
            if error.not_found:
                raise MissingReferenceError(
                    f"{field}: {what} not found",
                    store=store,
                    fix=f"create it, or fix the reference in {field}",
                ) from None
            if error.status in (401, 403):
                raise MissingReferenceError(
                    f"{field}: the controller may not read {what} ({error.status})",
                    store=store,
                    fix="grant the controller's service account access in its RBAC rules",
                ) from None
            raise StoreUnavailableError(
                f"{field}: reading {what} failed: {error}", store=store
            ) from None

    def _shown_namespace(self, selector: Any) -> str:
        named = getattr(selector, "namespace", None)
        if self.store_namespace is not None:
            return self.store_namespace
        return named or self.external_secret_namespace


def _key_content(body: dict[str, Any], key: str, *, encoded: bool) -> bytes | None:
    data = body.get("data") or {}
    if key in data:
        if not encoded:
            return str(data[key]).encode()
        try:
            return base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError):
            return None
    binary = body.get("binaryData") or {}
    if key in binary:
        return base64.b64decode(binary[key])
    return None


def foreign_namespace_references(spec: Any, namespace: str) -> list[str]:
    """Return a problem for each reference in a SecretStore's spec that names another namespace.

    Such a store cannot work, because reading the reference always fails, so it is reported
    invalid at once instead of at each reconcile. Reference fields are those named `*SecretRef`,
    `serviceAccountRef` and `caProvider`; a Vault provider's own `namespace` is not one.
    """
    problems: list[str] = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{path}[{index}]")
            return
        if not isinstance(value, dict):
            return
        for key, item in value.items():
            field = f"{path}.{key}"
            named = item.get("namespace") if isinstance(item, dict) else None
            if _is_reference(str(key)) and named and named != namespace:
                problems.append(
                    f"{field}.namespace: {named} is not the SecretStore's namespace {namespace}, "
                    "and a SecretStore reads references only in its own namespace; remove the "
                    "namespace, or use a ClusterSecretStore"
                )
            visit(item, field)

    visit(spec, "spec")
    return problems


def _is_reference(field: str) -> bool:
    return field.endswith("SecretRef") or field in ("serviceAccountRef", "caProvider")
