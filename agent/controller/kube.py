"""A small asynchronous Kubernetes API client for the controller, on aiohttp.

kopf talks to the API for watching and its own bookkeeping; the controller needs a few more
requests (Secrets, status, namespaces, TokenRequest) and must not depend on the `kubernetes`
client package, whose dependencies conflict with botocore's. The client logs in with the same
function as kopf (`ConnectionInfo`), logs in again once after a 401, and turns every failure into
`KubeApiError` with the status, the API's reason and the request path, never a request body.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from agent.errors import AgentError

if TYPE_CHECKING:
    import kopf

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 64
_MAX_MESSAGE = 300

Login = Callable[[], Awaitable["kopf.ConnectionInfo"]]


class KubeApiError(AgentError):
    """A Kubernetes API request failed; `status` is the HTTP status, 0 when none was received."""

    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.reason = reason
        self.path = path
        text = f"{method} {path}: {status} {reason}".rstrip()
        if message:
            text += f" ({message[:_MAX_MESSAGE]})"
        super().__init__(text)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


class KubeClient:
    """Sends JSON requests to the API server named by the login's `ConnectionInfo`."""

    def __init__(self, login: Login) -> None:
        self._login = login
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._files: list[str] = []

    async def get(self, path: str, *, params: Mapping[str, str] | None = None) -> Any | None:
        """GET an object or list; None when the API answers 404."""
        try:
            return await self.request("GET", path, params=params)
        except KubeApiError as error:
            if error.not_found:
                return None
            raise

    async def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        """Send a JSON merge patch; a `metadata.resourceVersion` in it makes it conditional."""
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, *, resource_version: str | None = None) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version is not None:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.request("DELETE", path, body=body)
        except KubeApiError as error:
            if not error.not_found:
                raise

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request; log in again and retry once after 401 Unauthorized."""
        for attempt in (1, 2):
            session, info = await self._connect(renew=attempt == 2)
            url = info.server.rstrip("/") + path
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            headers.update(info.as_http_headers())
            try:
                async with session.request(
                    method, url, json=body, params=params, headers=headers
                ) as response:
                    if response.status == 401 and attempt == 1:
                        continue
                    payload = await _payload(response)
                    if response.status >= 400:
                        raise _error(response.status, payload, method=method, path=path)
                    return payload
            except (aiohttp.ClientError, TimeoutError) as error:
                raise KubeApiError(
                    0, type(error).__name__, str(error), method=method, path=path
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        for name in self._files:
            try:
                os.unlink(name)
            except OSError:
                pass
        self._files.clear()

    async def _connect(self, *, renew: bool) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        if self._info is None or renew:
            info = await self._login()
            if self._session is not None and info != self._info:
                await self._session.close()
                self._session = None
            self._info = info
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl_context(self._info), limit=MAX_CONNECTIONS
            )
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session, self._info

    def _ssl_context(self, info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
        if not info.server.startswith("https://"):
            return False
        if info.insecure:
            return False
        cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        if cadata is not None and "-----BEGIN" not in cadata:
            cadata = base64.b64decode(cadata).decode()
        context = ssl.create_default_context(
            cafile=os.fsdecode(info.ca_path) if info.ca_path else None, cadata=cadata
        )
        certificate = self._file(info.certificate_path, info.certificate_data)
        key = self._file(info.private_key_path, info.private_key_data)
        if certificate is not None:
            context.load_cert_chain(certificate, key)
        return context

    def _file(self, path: Any, data: str | bytes | None) -> str | None:
        """Return a file path for PEM content given as a path or as (base64) data."""
        if path:
            return os.fsdecode(path)
        if data is None:
            return None
        raw = data.encode() if isinstance(data, str) else data
        if b"-----BEGIN" not in raw:
            raw = base64.b64decode(raw)
        handle, name = tempfile.mkstemp(prefix="secrets-agent-kube-", suffix=".pem")
        with os.fdopen(handle, "wb") as stream:
            stream.write(raw)
        self._files.append(name)
        return name


async def _payload(response: aiohttp.ClientResponse) -> Any:
    if response.content_type == "application/json":
        return await response.json()
    text = await response.text()
    return {"message": text[:_MAX_MESSAGE]} if text else None


def _error(status: int, payload: Any, *, method: str, path: str) -> KubeApiError:
    reason, message = "", ""
    if isinstance(payload, dict):
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or "")
    return KubeApiError(status, reason, message, method=method, path=path)


def secrets_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return base if name is None else f"{base}/{name}"


def resource_path(plural: str, *, name: str, namespace: str | None, status: bool = False) -> str:
    """Path of one secrets-agent.io object (namespaced or cluster-scoped)."""
    from agent.controller import API_VERSION

    where = f"namespaces/{namespace}/" if namespace else ""
    path = f"/apis/{API_VERSION}/{where}{plural}/{name}"
    return path + "/status" if status else path
