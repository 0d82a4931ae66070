"""HTTP(S) transport for the emulator: a threading `http.server` bound to a loopback address.

Each connection runs in its own daemon thread and speaks HTTP/1.1 with keep-alive, as Vault's Go
server does. With a certificate and key the listening socket is wrapped in TLS; the handshake
runs in the connection's thread, so a client that rejects the certificate cannot stall others.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .router import MAX_REQUEST_BYTES, HTTPResult, Router, encode_json

logger = logging.getLogger(__name__)


def require_loopback(host: str) -> None:
    """Raise ValueError unless `host` is `localhost` or a loopback IP address."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} is not a loopback address; use 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"host {host!r} is not a loopback address; use 127.0.0.1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add about 40 ms to every reply.
    disable_nagle_algorithm = True
    server: _Server

    def __getattr__(self, name: str) -> Any:
        # http.server looks up `do_<METHOD>`. Vault accepts LIST and returns 405 for other unknown
        # methods, so every method goes to one entry point and the router decides.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        latency = self.server.router.state.latency
        if latency > 0:
            time.sleep(latency)
        result = self.server.router.dispatch(self.command, self.path, self.headers, body)
        self._send(result)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send_too_large()
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_REQUEST_BYTES:
                self.close_connection = True
                self._send_too_large()
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_too_large(self) -> None:
        error = encode_json({"errors": ["http: request body too large"]})
        headers = {"Cache-Control": "no-store", "Content-Type": "application/json"}
        self._send(HTTPResult(413, error, headers))

    def _send(self, result: HTTPResult) -> None:
        # Vault sends no Server header, so this skips the one send_response() would add.
        self.log_request(result.status)
        self.send_response_only(result.status)
        self.send_header("Date", self.date_time_string())
        for name, value in result.headers.items():
            self.send_header(name, value)
        if result.status != 204:
            self.send_header("Content-Length", str(len(result.body)))
        self.end_headers()
        if self.command != "HEAD" and result.status != 204 and result.body:
            self.wfile.write(result.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        logger.debug("event=emulator_http %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], router: Router, ssl_context: ssl.SSLContext | None
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.router = router
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.ssl_context is not None:
            connection = self.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so clients see the server go away as with Vault."""
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop the connection or reject the certificate are expected in tests.
        logger.debug("event=emulator_connection_error client=%s", client_address, exc_info=True)


class HTTPServerThread:
    """A started server and the threads serving it and reaping expired tokens and leases."""

    def __init__(
        self,
        router: Router,
        *,
        host: str,
        port: int,
        certfile: str | None,
        keyfile: str | None,
        reap_interval: float = 0.2,
    ) -> None:
        require_loopback(host)
        context = None
        if certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
        self._server = _Server((host, port), router, context)
        bound_port = self._server.server_address[1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if context else 'http'}://{url_host}:{bound_port}"
        self._stopping = threading.Event()
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vault-emulator-http",
            daemon=True,
        )
        self._reap_thread = threading.Thread(
            target=self._reap_loop,
            args=(router, reap_interval),
            name="vault-emulator-reaper",
            daemon=True,
        )
        self._serve_thread.start()
        self._reap_thread.start()

    def _reap_loop(self, router: Router, interval: float) -> None:
        # Requests reap on arrival; this loop makes expiry visible to the credential hooks even
        # while no client is calling.
        while not self._stopping.wait(interval):
            try:
                router.state.reap()
            except Exception:
                logger.exception("event=emulator_reap_failed")

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._serve_thread.join(timeout=5)
        self._reap_thread.join(timeout=5)
