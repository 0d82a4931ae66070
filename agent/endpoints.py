"""HTTP endpoints of the sidecar: `/livez`, `/readyz` and `/metrics`.

Served by a small threaded standard-library server so that the health endpoints answer while a
sync round is in progress. `/readyz` returns 200 once every target has a complete generation on
disk and 503 before; its JSON body names targets that are pending, stale or failing, with error
messages that never contain values.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """Serves the endpoints on `address` in a daemon thread until `stop` is called."""

    def __init__(
        self, address: tuple[str, int], *, readiness: Readiness, registry: CollectorRegistry
    ) -> None:
        handler = _make_handler(readiness, registry)
        self._server = ThreadingHTTPServer(address, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(readiness: Readiness, registry: CollectorRegistry) -> type:
    class Handler(BaseHTTPRequestHandler):
        def version_string(self) -> str:
            return "secrets-agent"

        def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ready, body = readiness()
                self._send(
                    200 if ready else 503, json.dumps(body).encode() + b"\n", "application/json"
                )
            elif path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # probes every few seconds would drown the event log

    return Handler
