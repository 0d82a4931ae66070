"""The controller and an unreachable Kubernetes API server: at start, and after it started."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from agent.controller.api_health import ApiHealth
from tests.controller.conftest import Cluster, eventually

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: test
contexts: [{{name: test, context: {{cluster: test, user: test}}}}]
clusters: [{{name: test, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: test, user: {{token: fake-kube-token}}}}]
"""


def closed_port() -> int:
    """Return a loopback port that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Proxy:
    """A TCP proxy on a loopback port to the emulator, which a test can stop and start again,
    as an API server that goes away and comes back."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (str(parts.hostname), int(parts.port or 80))
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            self._writers -= {writer, upstream_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


async def healthz(port: int | None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status, await response.text()


def test_unreachable_api_exits_with_one_line(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(server=server))
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SECRETS_AGENT_", "KUBERNETES_"))
    }
    environment.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp_path))
    command = [sys.executable, "-m", "agent", "controller", "--standalone"]
    command += ["--listen", "127.0.0.1:0", "--api-startup-timeout", "0.5"]

    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=environment, check=False
    )

    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"secrets-agent: cannot reach the Kubernetes API server {server} ")
    assert f"(from kubeconfig {kubeconfig}, current context)" in last
    assert "Connect call failed" in last
    assert "check the server address in that kubeconfig" in last
    assert "Traceback" not in result.stderr
    assert "Task exception was never retrieved" not in result.stderr
    assert "fake-kube-token" not in result.stderr


async def test_api_outage_warns_in_healthz(cluster: Cluster) -> None:
    proxy = Proxy(cluster.url)
    await proxy.start()
    controller = await cluster.start_controller(
        server=proxy.url, api_warning_seconds=0.5, api_probe_seconds=0.1
    )
    port = controller.health.port
    assert await healthz(port) == (200, "ok\n")

    await proxy.stop()
    try:
        await eventually(lambda: controller.api_health.outage_seconds() > 0.5, timeout=10)
        status, body = await healthz(port)
    finally:
        await proxy.start()

    assert status == 200
    lines = body.splitlines()
    assert lines[0] == "ok"
    assert len(lines) == 2, body
    assert lines[1].startswith(
        f"warning: the Kubernetes API server {proxy.url} has not responded for "
    )
    assert "(last error: GET /version: 0 " in lines[1]

    await eventually(lambda: controller.api_health.failing_since is None, timeout=10)
    assert await healthz(port) == (200, "ok\n")


async def test_short_api_outage_no_warning(cluster: Cluster) -> None:
    proxy = Proxy(cluster.url)
    await proxy.start()
    controller = await cluster.start_controller(
        server=proxy.url, api_warning_seconds=3600, api_probe_seconds=0.1
    )

    await proxy.stop()
    try:
        await eventually(lambda: controller.api_health.failing_since is not None, timeout=10)
        status, body = await healthz(controller.health.port)
    finally:
        await proxy.start()

    assert (status, body) == (200, "ok\n")


def test_api_health_dates_outage_from_first_failure() -> None:
    now = [100.0]
    health = ApiHealth(clock=lambda: now[0])
    health.succeeded()
    assert health.outage_seconds() == 0.0

    # A request sent before the last success does not move the outage's start before it.
    health.failed(sent=90.0, error="GET /version: 0 ClientConnectorError")
    now[0] = 130.0
    assert health.outage_seconds() == 30.0
    health.failed(sent=125.0, error="GET /version: 503 ServiceUnavailable")
    assert health.outage_seconds() == 30.0
    assert health.last_error == "GET /version: 503 ServiceUnavailable"

    health.succeeded()
    assert health.outage_seconds() == 0.0
    assert health.failing_since is None
