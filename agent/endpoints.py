"""HTTP endpoints of the sidecar: `/livez`, `/readyz` and `/metrics`.

Served by a small threaded standard-library server so that the health endpoints answer while a
sync round is in progress. Between requests the serving thread sleeps in select(2), so an idle
agent spends no CPU time here. `/readyz` returns 200 once every target has a complete generation
on disk and 503 before; its JSON body names targets that are pending, stale or failing, with
error messages that never contain values.
"""

from __future__ import annotations

import json
import os
import selectors
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
        # `_serve` calls handle_request only once select(2) reported a connection, so it must not
        # wait for another one.
        self._server.timeout = 0
        # socketserver's serve_forever wakes every 0.5 s to look for a shutdown request. `stop`
        # writes to this pipe instead, so the serving thread can block until there is work.
        self._wake_reader, self._wake_writer = os.pipe()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="health-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting connections and close the socket; requests in progress may finish."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_writer, b"\0")
        if self._thread.is_alive():
            self._thread.join()
        self._server.server_close()
        os.close(self._wake_reader)
        os.close(self._wake_writer)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._server.socket and not self._stopping.is_set():
                        self._server.handle_request()


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
