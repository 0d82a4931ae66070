"""Turn one HTTP request into Vault's reply: method mapping, sealing, namespaces, tokens, ACLs.

The checks run in the order of Vault's request handling:
1. an open `sys/` route (health, seal status) responds at once;
2. a sealed server rejects everything else with 503;
3. the namespace is resolved;
4. the token is checked: 403 `permission denied` when it is missing, unknown, expired, revoked
   or from an unrelated namespace;
5. the route is found and the ACL applied (403 with the multierror text);
6. the handler runs.
Each request is handled under the state lock and recorded without its token or any value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import formats
from .leases import CredentialHooks
from .protocol import (
    ACL_DENIED,
    CREATE,
    DELETE,
    HEADER,
    LIST,
    PATCH,
    PERMISSION_DENIED,
    READ,
    SEALED,
    UPDATE,
    Engine,
    Reply,
    Request,
    VaultHTTPError,
    capability_for,
    no_handler,
)
from .state import Namespace, RequestRecord, Token, VaultState
from .system import OPEN_ROUTES, SystemEngine
from .tokens import TokenEngine

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024

_FAULT_MESSAGES = {
    412: "required index state not present",
    429: 'request path "{path}": rate limit quota exceeded',
    500: "internal error",
    502: "upstream rate limited",
    503: SEALED,
}


@dataclass
class HTTPResult:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Route:
    engine: Engine
    rest: str
    mount_path: str
    mount_type: str


def encode_json(document: Any) -> bytes:
    # Go's json.Encoder writes compact JSON followed by a newline.
    return (json.dumps(document, separators=(",", ":")) + "\n").encode()


class Router:
    def __init__(self, state: VaultState, hooks: CredentialHooks) -> None:
        self.state = state
        self.system = SystemEngine(hooks)
        self.tokens = TokenEngine()

    def dispatch(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> HTTPResult:
        """Handle one HTTP request and return the reply. Never raises."""
        url = urlsplit(target)
        path = unquote(url.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        response_headers = {"Cache-Control": "no-store", "Content-Type": "application/json"}
        namespace_header = headers.get("X-Vault-Namespace")
        if namespace_header is not None:
            response_headers["X-Vault-Namespace"] = namespace_header

        with self.state.lock:
            self.state.reap()
            context = _Context(method=method.upper(), namespace=namespace_header or "")
            try:
                if not path.startswith("/v1/"):
                    raise VaultHTTPError(404)
                context.path = path[len("/v1/") :]
                outcome = self._handle(context, query, headers, body)
            except VaultHTTPError as error:
                outcome = error
            except Exception:
                logger.exception("event=emulator_handler_failed path=%s", context.path)
                outcome = VaultHTTPError(500, "internal error")
            result = self._render(outcome, context)
            result.headers = {**response_headers, **result.headers}
            self.state.record(
                RequestRecord(
                    method=context.method,
                    path=context.path,
                    status=result.status,
                    namespace=context.namespace,
                    accessor=context.token.accessor if context.token else None,
                    time=self.state.now(),
                )
            )
            if context.token is not None and context.exhausted:
                self.state.revoke_token(context.token)
            return result

    # -- request handling ------------------------------------------------------------------------

    def _handle(
        self,
        context: _Context,
        query: dict[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        state = self.state
        fault = state.take_fault(context.path)
        if fault is not None:
            message = _FAULT_MESSAGES.get(fault.status, "").format(path=context.path)
            raise VaultHTTPError(fault.status, *([message] if message else []))

        operation = _operation(context.method, query, headers)
        logical_path = context.path
        if operation == LIST and not logical_path.endswith("/"):
            logical_path += "/"
        data = _request_data(context.method, operation, query, body)
        if headers.get("X-Vault-Wrap-TTL"):
            raise VaultHTTPError(400, "response wrapping is not supported by this emulator")

        open_route = logical_path.startswith("sys/") and logical_path[4:] in OPEN_ROUTES
        if state.sealed and not open_route:
            raise VaultHTTPError(503, SEALED)
        namespace = state.get_namespace("" if open_route else context.namespace)
        if namespace is None:
            raise VaultHTTPError(404, "namespace not found")
        context.namespace = namespace.path

        token_id = _token_from_headers(headers)
        token = state.lookup_token(token_id)
        if token is not None and state.token_reaches(token, namespace):
            context.token = token
        route = self._route(namespace, logical_path)
        needs_token = route is None or not route.engine.unauthenticated(route.rest)
        if needs_token and context.token is None:
            raise VaultHTTPError(403, PERMISSION_DENIED)

        request = Request(
            state=state,
            method=context.method,
            operation=operation,
            path=logical_path,
            data=data,
            namespace=namespace,
            token=context.token,
            query=query,
            rest=route.rest if route else "",
            mount_path=route.mount_path if route else "",
        )
        if route is None:
            capability = capability_for(operation, exists=True)
            if not state.allowed(context.token, namespace, logical_path, capability):
                raise VaultHTTPError(403, ACL_DENIED)
            raise no_handler(logical_path)
        if needs_token:
            self._authorize(request, route.engine, context)
        context.mount_type = route.mount_type
        return route.engine.handle(request)

    def _authorize(self, request: Request, engine: Engine, context: _Context) -> None:
        capability = engine.capability(request)
        if capability is not None and not request.allowed(capability):
            raise VaultHTTPError(403, ACL_DENIED)
        token = context.token
        assert token is not None
        if token.num_uses > 0:
            token.num_uses -= 1
            context.exhausted = token.num_uses == 0

    def _route(self, namespace: Namespace, path: str) -> _Route | None:
        if path.startswith("sys/"):
            return _Route(self.system, path[len("sys/") :], "sys/", "system")
        if path.startswith("auth/"):
            inner = path[len("auth/") :]
            if inner == "token" or inner.startswith("token/"):
                return _Route(self.tokens, inner[len("token/") :], "token/", "token")
            auth_mount = namespace.find_auth_mount(inner)
            if auth_mount is None:
                return None
            return _Route(
                auth_mount.engine, inner[len(auth_mount.path) :], auth_mount.path, auth_mount.type
            )
        mount = namespace.find_mount(path)
        if mount is None:
            return None
        return _Route(mount.engine, path[len(mount.path) :], mount.path, mount.type)

    # -- rendering -------------------------------------------------------------------------------

    def _render(self, outcome: Reply | VaultHTTPError | None, context: _Context) -> HTTPResult:
        if outcome is None:
            return HTTPResult(status=204)
        if isinstance(outcome, VaultHTTPError):
            document: dict[str, Any] = {"errors": outcome.errors}
            if outcome.data is not None:
                document["data"] = outcome.data
            return HTTPResult(outcome.status, encode_json(document), dict(outcome.headers))
        if outcome.empty:
            return HTTPResult(outcome.status, b"", dict(outcome.headers))
        if outcome.raw is not None:
            return HTTPResult(outcome.status, encode_json(outcome.raw), dict(outcome.headers))
        envelope: dict[str, Any] = {
            "request_id": formats.new_request_id(),
            "lease_id": outcome.lease_id,
            "renewable": outcome.renewable,
            "lease_duration": outcome.lease_duration,
            "data": outcome.data,
            "wrap_info": None,
            "warnings": outcome.warnings,
            "auth": outcome.auth,
            "mount_type": (
                outcome.mount_type if outcome.mount_type is not None else context.mount_type
            ),
        }
        if outcome.data_at_top_level and isinstance(outcome.data, dict):
            for key, value in outcome.data.items():
                envelope.setdefault(key, value)
        return HTTPResult(outcome.status, encode_json(envelope), dict(outcome.headers))


@dataclass
class _Context:
    """Facts the router collects about a request while handling it, for rendering and records."""

    method: str
    namespace: str
    path: str = ""
    token: Token | None = None
    mount_type: str = ""
    exhausted: bool = False


def _operation(method: str, query: dict[str, str], headers: Mapping[str, str]) -> str:
    if method == "GET":
        if "list" in query:
            flag = formats.parse_bool(query["list"])
            if flag is None:
                raise VaultHTTPError(400)
            return LIST if flag else READ
        return READ
    if method == "LIST":
        return LIST
    if method in ("POST", "PUT"):
        return UPDATE
    if method == "DELETE":
        return DELETE
    if method == "HEAD":
        return HEADER
    if method == "PATCH":
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/merge-patch+json":
            raise VaultHTTPError(415, "PATCH requires Content-Type of application/merge-patch+json")
        return PATCH
    raise VaultHTTPError(405)


def _request_data(
    method: str, operation: str, query: dict[str, str], body: bytes
) -> dict[str, Any] | None:
    if operation in (UPDATE, PATCH, CREATE):
        if not body.strip():
            return None
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise VaultHTTPError(400, "error parsing JSON") from None
        if document is None:
            return None
        if not isinstance(document, dict):
            raise VaultHTTPError(400, "error parsing JSON")
        return document
    if method in ("GET", "DELETE", "LIST") or operation in (READ, DELETE, LIST):
        fields = {key: value for key, value in query.items() if key != "list"}
        return fields or None
    return None


def _token_from_headers(headers: Mapping[str, str]) -> str | None:
    token = headers.get("X-Vault-Token")
    if token:
        return token
    authorization = headers.get("Authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
