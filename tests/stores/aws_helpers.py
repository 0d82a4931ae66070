"""Helpers for the AWS store tests: store declarations, metric counts and a scripted endpoint.

`ScriptedEndpoint` is a small HTTP server on loopback that sits between boto3 and moto's server.
It returns scripted responses to some requests (a throttling error, an access denial, ...) and
forwards every other request to moto unchanged, so the stores are tested over the real wire
protocol without patching any client.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.declarations import Origin, StoreDeclaration
from agent.metrics import Metrics
from agent.models import StoreSpec


def aws_store(name: str, service: str, **aws: object) -> StoreDeclaration:
    """A SecretStore declaration for `provider.aws` with the given fields (camelCase)."""
    spec = StoreSpec.model_validate({"provider": {"aws": {"service": service, **aws}}})
    return StoreDeclaration(kind="SecretStore", name=name, spec=spec, origin=Origin("test", 1))


def request_count(metrics: Metrics, *, store: str, operation: str, result: str = "") -> int:
    """Requests counted in `secrets_agent_backend_requests_total`, optionally for one result."""
    total = 0.0
    for family in metrics.registry.collect():
        if family.name != "secrets_agent_backend_requests":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            if labels["store"] != store or labels["operation"] != operation:
                continue
            if result and labels["result"] != result:
                continue
            total += sample.value
    return int(total)


@dataclass(frozen=True)
class SeenRequest:
    """One request the scripted endpoint received."""

    operation: str
    # The access key ID from the SigV4 Authorization header; "" for an unsigned request.
    access_key_id: str
    # JSON protocol: the decoded body; query protocol (STS): the form fields.
    params: dict[str, Any]
    # The X-Amz-Security-Token header: the session token of temporary credentials.
    session_token: str = ""

    @classmethod
    def parse(cls, headers: Any, body: bytes) -> SeenRequest:
        text = body.decode("utf-8", "replace")
        target = headers.get("X-Amz-Target", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
            params = json.loads(text or "{}")
        else:
            params = {name: values[0] for name, values in parse_qs(text).items()}
            operation = params.get("Action", "")
        match = re.search(r"Credential=([^/]+)/", headers.get("Authorization", ""))
        access_key_id = match.group(1) if match else ""
        return cls(operation, access_key_id, params, headers.get("X-Amz-Security-Token", ""))


@dataclass(frozen=True)
class ScriptedResponse:
    """An HTTP response the scripted endpoint sends instead of forwarding to moto."""

    status: int
    body: bytes
    content_type: str


def json_response(document: dict[str, Any]) -> ScriptedResponse:
    """A successful response in the AWS JSON protocol."""
    return ScriptedResponse(200, json.dumps(document).encode(), "application/x-amz-json-1.1")


def json_error(error_type: str, message: str, *, status: int = 400) -> ScriptedResponse:
    """An error in the AWS JSON protocol (SSM, Secrets Manager)."""
    body = json.dumps({"__type": error_type, "message": message}).encode()
    return ScriptedResponse(status, body, "application/x-amz-json-1.1")


def query_error(code: str, message: str, *, status: int = 403) -> ScriptedResponse:
    """An error in the AWS query protocol (STS)."""
    body = (
        "<ErrorResponse><Error><Type>Sender</Type>"
        f"<Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>scripted-request</RequestId></ErrorResponse>"
    ).encode()
    return ScriptedResponse(status, body, "text/xml")


class ScriptedEndpoint:
    """An HTTP endpoint on 127.0.0.1 that responds from a script, else forwards to moto.

    `script(request)` is called for every request; it returns a response or None to forward
    the request to moto. `requests` lists every request seen, in order.
    """

    def __init__(
        self,
        forward_to: str,
        script: Callable[[SeenRequest], ScriptedResponse | None] | None = None,
    ) -> None:
        self.forward_to = urlsplit(forward_to)
        self.script = script or (lambda request: None)
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScriptedEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def operations(self) -> list[str]:
        """The operation of every request seen, in order."""
        return [request.operation for request in self.requests]

    def throttle_first(self, operation: str, count: int) -> None:
        """Answer the next `count` requests for `operation` with ThrottlingException."""
        remaining = [count]

        def script(seen: SeenRequest) -> ScriptedResponse | None:
            if seen.operation == operation and remaining[0] > 0:
                remaining[0] -= 1
                return json_error("ThrottlingException", "Rate exceeded")
            return None

        self.script = script

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                seen = SeenRequest.parse(self.headers, body)
                with endpoint._lock:
                    endpoint.requests.append(seen)
                    response = endpoint.script(seen)
                if response is None:
                    response = endpoint._forward(self.command, self.path, self.headers, body)
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.send_header("x-amzn-RequestId", "scripted-request")
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        return Handler

    def _forward(self, method: str, path: str, headers: object, body: bytes) -> ScriptedResponse:
        connection = http.client.HTTPConnection(
            self.forward_to.hostname, self.forward_to.port, timeout=30
        )
        try:
            forwarded = {
                name: value
                for name, value in headers.items()  # type: ignore[attr-defined]
                if name.lower() not in ("host", "connection")
            }
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            content = response.read()
            content_type = response.getheader("Content-Type", "application/octet-stream")
            return ScriptedResponse(response.status, content, content_type)
        finally:
            connection.close()
